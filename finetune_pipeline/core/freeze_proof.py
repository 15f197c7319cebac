"""The freeze proof: did training change the backbone? Checked on the weights, not on the flags.

"Frozen" is a claim about requires_grad; weight decay applied to every parameter, a norm layer's
running statistics, or a forgotten parameter group can still change "frozen" weights. So we
fingerprint every backbone tensor (parameters and buffers) before and after training and compare.
"""

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.training_mode import TrainingMode


def tensor_sha256(tensor: torch.Tensor) -> str:
    raw_bytes = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw_bytes.numpy()).hexdigest()  # hashes the buffer in place, no copy


@dataclass
class Snapshot:
    """A module's tensors before training: their hashes, and a way to get the tensors back."""

    hashes: dict[str, str]
    # Called only when something changed, to measure by how much. A backbone is not copied (that would
    # hold a second ~90 MB copy through all of training): its original weights are read again from disk.
    original: Callable[[], Mapping[str, torch.Tensor]]


def snapshot(tensors: nn.Module | Mapping[str, torch.Tensor],
             reload_original: Callable[[], Mapping[str, torch.Tensor]] | None = None) -> Snapshot:
    """Hash every tensor (of a module, or by name); keep a copy unless reload_original can read them again."""
    state = tensors.state_dict() if isinstance(tensors, nn.Module) else tensors
    hashes = {name: tensor_sha256(tensor) for name, tensor in state.items()}
    if reload_original is None:
        copy = {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}
        reload_original = lambda: copy  # noqa: E731
    return Snapshot(hashes=hashes, original=reload_original)


def fingerprint_of(hashes: dict[str, str]) -> str:
    """One hash for a whole module's state, from its tensor hashes: identifies exact weights."""
    digest = hashlib.sha256()
    for name, tensor_hash in hashes.items():
        digest.update(name.encode())
        digest.update(tensor_hash.encode())
    return digest.hexdigest()


def tensor_changes(before: Snapshot, after: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    after_hashes = {name: tensor_sha256(tensor) for name, tensor in after.items()}
    changed = [name for name in after if after_hashes[name] != before.hashes[name]]
    original = before.original() if changed else {}
    tensors = {}
    max_abs_change: float | None = 0.0
    for name, tensor in after.items():
        change: float | None = 0.0
        if name in changed:
            # measurable only against the very weights that were hashed before training
            same_base = name in original and tensor_sha256(original[name]) == before.hashes[name]
            change = None
            if same_base and tensor.is_floating_point():
                change = (tensor.detach().cpu().float() - original[name].float()).abs().max().item()
        max_abs_change = None if change is None or max_abs_change is None else max(max_abs_change, change)
        tensors[name] = {
            "before_sha256": before.hashes[name],
            "after_sha256": after_hashes[name],
            "changed": name in changed,
            "max_abs_change": change,
        }
    return {
        "tensors_total": len(tensors),
        "tensors_changed": sum(entry["changed"] for entry in tensors.values()),
        "max_abs_change": max_abs_change,
        "tensors": tensors,
    }


LAYER_NUMBER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # encoder.layer.3.attention... -> 3


def layer_of(tensor_name: str) -> str:
    """The part of the backbone a tensor belongs to: 'embeddings', 'layer 3', 'pooler'."""
    match = LAYER_NUMBER.search(tensor_name)
    return f"layer {match.group(1)}" if match else tensor_name.split(".")[0]


def layer_table(hashes: dict[str, str], report: dict[str, Any], trains: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Per part of the backbone (in its order): how many tensors, how many changed, by how much at most, and
    whether the config trains it."""
    rows: dict[str, dict[str, Any]] = {}
    for name in hashes:
        part = layer_of(name)
        row = rows.setdefault(part, {"part": part, "trained": trains(part), "tensors": 0, "tensors_changed": 0,
                                     "max_abs_change": 0.0, "as_configured": True})
        entry = report["tensors"].get(name, {"changed": False, "max_abs_change": 0.0})
        row["tensors"] += 1
        row["tensors_changed"] += entry["changed"]
        row["as_configured"] = (row["tensors_changed"] > 0) == row["trained"]  # a trained part changed, a frozen one not
        change = entry["max_abs_change"]
        row["max_abs_change"] = None if change is None or row["max_abs_change"] is None else max(
            row["max_abs_change"], change)
    return list(rows.values())


NOT_LOADED = ("not loaded: every split's features came from the feature cache, so training and the test used "
              "the head alone and the backbone's weights never entered this process")


def build_freeze_proof(
    backbone_before: Snapshot,
    head_before: Snapshot,
    adapters_before: Snapshot,
    model: TextClassifier,
    mode: TrainingMode,
) -> dict[str, Any]:
    """model.backbone is None when the run never loaded it; backbone_before then holds its remembered hashes.
    What must have changed is what the mode trains: with top layers, each of them changed and everything below
    did not; under LoRA (adapters_before: the adapters as they started) the backbone's own weights did not change
    at all, and every adapter tensor did."""
    backbone = model.backbone
    if backbone is None:
        backbone_report = {"tensors_total": len(backbone_before.hashes), "tensors_changed": 0,
                           "max_abs_change": 0.0, "tensors": {}}
    else:
        backbone_report = tensor_changes(backbone_before, model.base_state())
    head_report = tensor_changes(head_before, model.head.state_dict())
    adapter_report = tensor_changes(adapters_before, model.adapter_state()) if adapters_before.hashes else None
    backbone_changed = backbone_report["tensors_changed"] > 0
    lora = adapter_report is not None
    layers = layer_table(backbone_before.hashes, backbone_report, mode.trains_part())
    if lora:  # the weights frozen, the adapters trained
        consistent = not backbone_changed and adapter_report["tensors_changed"] == adapter_report["tensors_total"]
    elif mode.first_trained_layer is None:  # frozen must mean unchanged; trained must mean changed (else the lr did nothing)
        consistent = backbone_changed == mode.trains_backbone
    else:  # each part as the config says: the top layers changed, the embeddings and the rest unchanged
        consistent = all(row["as_configured"] for row in layers)
    return {
        "freeze_backbone": not mode.trains_backbone,
        "first_trained_layer": mode.first_trained_layer,
        "lora": lora,
        "backbone_changed": backbone_changed,
        "consistent_with_config": consistent,
        "head_changed": head_report["tensors_changed"] > 0,
        "backbone_checked": "every tensor hashed before and after training" if backbone is not None else NOT_LOADED,
        "summary": {
            "backbone_tensors_total": backbone_report["tensors_total"],
            "backbone_tensors_changed": backbone_report["tensors_changed"],
            "backbone_max_abs_change": backbone_report["max_abs_change"],
            "backbone_trainable_parameters": 0 if backbone is None
            else sum(p.numel() for p in backbone.parameters() if p.requires_grad),
            "head_tensors_changed": head_report["tensors_changed"],
            "head_max_abs_change": head_report["max_abs_change"],
            **({"adapter_tensors_total": adapter_report["tensors_total"],
                "adapter_tensors_changed": adapter_report["tensors_changed"]} if lora else {}),
        },
        "layers": layers,
        **({"adapter_tensors": adapter_report["tensors"]} if lora else {}),
        "backbone_tensors": backbone_report["tensors"],
        "head_tensors": head_report["tensors"],
    }
