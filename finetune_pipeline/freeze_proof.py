"""The freeze proof: did training change the backbone? Checked on the weights, not on the flags.

"Frozen" is a claim about requires_grad; weight decay applied to every parameter, a norm layer's
running statistics, or a forgotten parameter group can still change "frozen" weights. So we
fingerprint every backbone tensor (parameters and buffers) before and after training and compare.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def tensor_sha256(tensor: torch.Tensor) -> str:
    raw_bytes = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw_bytes.numpy()).hexdigest()  # hashes the buffer in place, no copy


@dataclass
class Snapshot:
    """A module's tensors before training: their hashes, and (optionally) a CPU copy to measure the change."""

    hashes: dict[str, str]
    tensors: dict[str, torch.Tensor] | None


def snapshot(module: nn.Module, keep_copy: bool) -> Snapshot:
    """keep_copy=False saves a copy of the weights in memory; a change is then still detected (by hash),
    but its size is not measured."""
    state = module.state_dict()
    return Snapshot(
        hashes={name: tensor_sha256(tensor) for name, tensor in state.items()},
        tensors={name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()} if keep_copy else None,
    )


def fingerprint_of(snapshot: Snapshot) -> str:
    """One hash for a whole module's state: identifies exact weights (the feature cache's key uses it)."""
    digest = hashlib.sha256()
    for name, tensor_hash in snapshot.hashes.items():
        digest.update(name.encode())
        digest.update(tensor_hash.encode())
    return digest.hexdigest()


def compare(before: Snapshot, module: nn.Module) -> dict[str, Any]:
    after = module.state_dict()
    tensors = {}
    max_abs_change: float | None = 0.0
    for name, tensor in after.items():
        after_hash = tensor_sha256(tensor)
        change: float | None = 0.0
        if after_hash != before.hashes[name]:
            change = None  # changed, by an amount we cannot measure without the copy
            if before.tensors is not None and tensor.is_floating_point():
                change = (tensor.detach().cpu().float() - before.tensors[name].float()).abs().max().item()
        max_abs_change = None if change is None or max_abs_change is None else max(max_abs_change, change)
        tensors[name] = {
            "before_sha256": before.hashes[name],
            "after_sha256": after_hash,
            "changed": after_hash != before.hashes[name],
            "max_abs_change": change,
        }
    return {
        "tensors_total": len(tensors),
        "tensors_changed": sum(entry["changed"] for entry in tensors.values()),
        "max_abs_change": max_abs_change,
        "tensors": tensors,
    }


def build_freeze_proof(
    backbone_before: Snapshot,
    head_before: Snapshot,
    backbone: nn.Module,
    head: nn.Module,
    freeze_backbone: bool,
) -> dict[str, Any]:
    backbone_report = compare(backbone_before, backbone)
    head_report = compare(head_before, head)
    backbone_changed = backbone_report["tensors_changed"] > 0
    return {
        "freeze_backbone": freeze_backbone,
        "backbone_changed": backbone_changed,
        # frozen must mean unchanged; trained must mean changed (else the encoder lr did nothing)
        "consistent_with_config": backbone_changed != freeze_backbone,
        "head_changed": head_report["tensors_changed"] > 0,
        "summary": {
            "backbone_tensors_total": backbone_report["tensors_total"],
            "backbone_tensors_changed": backbone_report["tensors_changed"],
            "backbone_max_abs_change": backbone_report["max_abs_change"],
            "backbone_trainable_parameters": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
            "head_tensors_changed": head_report["tensors_changed"],
            "head_max_abs_change": head_report["max_abs_change"],
        },
        "backbone_tensors": backbone_report["tensors"],
        "head_tensors": head_report["tensors"],
    }
