"""Preparing a run: check and load everything it needs before anything is written, so that a bad input (config,
data, backbone) leaves nothing behind. The dry run is this phase alone, with the memory preflight."""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune_pipeline.core import backbone_memo
from finetune_pipeline.core.batching import TokenizedSplit, length_statistics, tokenize_split
from finetune_pipeline.core.config import Config
from finetune_pipeline.core.data import Splits, describe_sources, load_splits
from finetune_pipeline.core.device import Placement, allow_tf32, resolve_device, resolve_precision
from finetune_pipeline.core.feature_cache import Found, cache_key, lookup_all
from finetune_pipeline.core.freeze_proof import Snapshot, fingerprint_of, snapshot
from finetune_pipeline.core.hidden_state_cache import estimated_bytes
from finetune_pipeline.core.language_check import language_warning, tokenization_report
from finetune_pipeline.core.model import (
    TextClassifier,
    backbone_max_length,
    build_classifier,
    check_backbone_kind,
    encoder_layers,
    load_backbone,
    load_tokenizer,
    resolve_backbone,
)
from finetune_pipeline.core.task import Task, build_task, imbalance_warning, task_type
from finetune_pipeline.core.training import optimizer_steps_per_epoch, seed_everything
from finetune_pipeline.core.training_mode import Cached, TrainingMode
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.baselines import baseline_scores
from finetune_pipeline.runs.memory_check import is_out_of_memory, out_of_memory, run_preflight
from finetune_pipeline.runtime import distributed

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class PreparedRun:
    """Everything a run needs, checked and loaded, before anything is written."""

    config: Config
    mode: TrainingMode  # what trains, what is frozen, what is cached
    task: Task  # what the head predicts, the loss, the metrics
    placement: Placement  # the device, the precision that runs there, the torchrun processes
    splits: Splits
    model: TextClassifier
    tokenized: dict[str, TokenizedSplit]
    backbone_before: Snapshot  # the backbone's tensor hashes before training (remembered if it was not loaded)
    backbone_parameters: int
    feature_keys: dict[str, dict[str, Any]]  # per split; empty without the feature cache
    cached_features: Found  # what the feature cache holds for those keys
    tokenization: dict[str, dict[str, Any]]  # per split: script, tokens per word, unknown-token share
    language_warning: str | None  # when the backbone's tokenizer does not seem to know the texts' language

    @property
    def backbone_sha256(self) -> str:
        return fingerprint_of(self.backbone_before.hashes)


def prepare_run(config: Config, dry_run: bool = False) -> PreparedRun:
    """Check and load everything the run needs: the device, the data, the tokenizer, the backbone and the model as
    the training mode trains it. Writes nothing but, for a frozen backbone, its remembered fingerprint in the
    cache folder; a dry run loads the weights in any case and writes nothing at all.

    A frozen run whose features are all in the feature cache does not load the backbone's weights (nor
    import the model code): the cache key needs only the weights' fingerprint, remembered in the cache
    folder (backbone_memo), and training needs only the head.
    """
    placement = place_run(config)
    processes = placement.processes
    splits = load_splits(config.data, config.seed, task_type(config))
    task = build_task(config, splits.label_names, [example.label for example in splits.train])

    tokenizer, backbone_config = load_tokenizer(config.model.backbone)
    check_backbone_kind(config.model.backbone, backbone_config, config.model.pooling)
    longest = backbone_max_length(backbone_config)
    if longest is not None and config.data.max_length > longest:
        raise UserInputError(
            f"data.max_length: {config.data.max_length} is more than the backbone '{config.model.backbone}' "
            f"can read ({longest} tokens); set it to {longest} or less"
        )
    mode = TrainingMode.of(config).with_layers(backbone_config)
    examples = dict(zip(SPLIT_NAMES, (splits.train, splits.val, splits.test), strict=True))
    tokenized = {name: tokenize_split(split, task.encode, tokenizer, config.data.max_length)
                 for name, split in examples.items()}
    tokenization = tokenization_report(examples, tokenized, tokenizer)

    cache_dir, location = Path(config.output.cache_dir), resolve_backbone(config.model.backbone)
    if mode.cached is not Cached.NOTHING and not dry_run:
        check_writable(cache_dir, "output.cache_dir")  # found now, not after the run folder exists
    remembered = backbone_memo.recall(cache_dir, location) if mode.caches_features else None
    keys, found = look_up_features(config, tokenized, remembered.sha256, placement) if remembered else ({}, {})
    all_cached = remembered is not None and all(features is not None for features, _, _ in found.values())

    backbone = None if all_cached and not dry_run else load_backbone(config.model.backbone)
    if backbone is None:
        backbone_before = Snapshot(remembered.tensor_hashes, original=dict)
        backbone_parameters = remembered.parameters
    else:
        backbone_before = snapshot(backbone, reload_original=lambda: load_backbone(config.model.backbone).state_dict())
        backbone_parameters = sum(parameter.numel() for parameter in backbone.parameters())
        if mode.caches_features and not dry_run:
            if processes.is_main:
                backbone_memo.remember(cache_dir, location,
                                       backbone_memo.BackboneFingerprint(backbone_before.hashes, backbone_parameters))
            if remembered is None or remembered.tensor_hashes != backbone_before.hashes:
                keys, found = look_up_features(config, tokenized, fingerprint_of(backbone_before.hashes), placement)

    # Seeded after loading: the head starts the same whether or not the backbone was loaded.
    seed_everything(config.seed)  # python, numpy and torch RNGs
    try:
        model = build_classifier(backbone, backbone_config, config, task, mode)
    except RuntimeError as error:  # e.g. model.hidden_dim 10**10: a head that cannot be allocated
        if not is_out_of_memory(error):
            raise
        raise out_of_memory(config, "building the model", str(error).splitlines()[0]) from None
    return PreparedRun(config, mode, task, placement, splits, model.to(placement.device), tokenized, backbone_before,
                       backbone_parameters, keys, found, tokenization,
                       language_warning(tokenization, config.model.backbone))


def check_writable(folder: Path, key: str) -> None:
    """The folder exists or can be made, and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserInputError(f"{key} '{folder}': cannot write there ({error.strerror or error}); point {key} at a "
                             "folder you may write, on a disk with room") from None


def place_run(config: Config) -> Placement:
    """The device (under torchrun on GPUs: this process's own), the precision it really runs, the processes."""
    device = resolve_device(config.training.device)
    processes = distributed.world()
    if device.type == "cuda" and processes.distributed:
        device = torch.device("cuda", processes.local_rank)  # under torchrun, one GPU per process
        torch.cuda.set_device(device)
    allow_tf32(device)
    return Placement(device, resolve_precision(config.training.mixed_precision, device), processes)


def look_up_features(
    config: Config, tokenized: dict[str, TokenizedSplit], backbone_sha256: str, placement: Placement,
) -> tuple[dict[str, dict[str, Any]], Found]:
    """Each split's cache key, and what the feature cache holds for it."""
    keys = {name: cache_key(split, config.model.backbone, backbone_sha256, config.model.pooling, placement.precision,
                            placement.device) for name, split in tokenized.items()}
    return keys, lookup_all(Path(config.output.cache_dir), keys)


def dry_run(config: Config) -> dict[str, Any]:
    """What a run would do, and whether its heaviest step fits in memory; writes nothing."""
    with distributed.process_group(resolve_device(config.training.device).type):
        prepared = prepare_run(config, dry_run=True)
        preflight = run_preflight(prepared.model, prepared.tokenized["train"], config, prepared.placement,
                                  prepared.mode, prepared.task)
    steps_per_epoch = optimizer_steps_per_epoch(len(prepared.splits.train), config.training)
    distribution = label_distributions(prepared)
    return {
        "config": config.to_plain(),
        "device": str(prepared.placement.device),
        "mixed_precision": {"requested": prepared.placement.precision.requested, "used": prepared.placement.precision.used,
                            "reason": prepared.placement.precision.reason},
        "data_sources": describe_sources(config.data, config.seed, type(prepared.task)),
        "task": prepared.task.name,
        "split_sizes": prepared.splits.sizes(),
        "label_names": prepared.splits.label_names,
        "label_distribution": distribution,
        "baselines": baseline_scores(prepared.task, prepared.tokenized, config.seed),
        "leakage": prepared.splits.leakage,
        "class_weights": prepared.task.class_weight_table(),
        "imbalance_warning": imbalance_warning(distribution["train"], config),
        "token_lengths": token_lengths(prepared),
        "tokenization": prepared.tokenization,
        "language_warning": prepared.language_warning,
        "uses_feature_cache": prepared.mode.caches_features,
        "backbone": describe_backbone_use(prepared),
        "effective_batch_size": config.effective_batch_size(),
        "optimizer_steps_per_epoch": steps_per_epoch,
        "optimizer_steps_total": steps_per_epoch * config.training.epochs,
        "preflight": preflight.as_dict(),
        "fits_in_memory": preflight.predicted_peak_mb <= preflight.available_mb,
    }


def describe_backbone_use(prepared: PreparedRun) -> str:
    """What trains, what is frozen and what is cached, in a line: 'frozen, features computed once and cached'."""
    mode, backbone = prepared.mode, prepared.model.backbone
    layers = len(encoder_layers(backbone)) if mode.first_trained_layer is not None else 0
    cache_mib = (sum(estimated_bytes(split, backbone.config.hidden_size) for split in prepared.tokenized.values())
                 / 2**20 if mode.caches_hidden_states else None)
    return mode.describe(layers, cache_mib, prepared.config.output.cache_dir)


def label_distributions(prepared: PreparedRun) -> dict[str, dict[str, float]]:
    """Per split: label -> examples (a regression target: its mean, std, min and max)."""
    return {name: prepared.task.distribution(split.labels) for name, split in prepared.tokenized.items()}


def token_lengths(prepared: PreparedRun) -> dict[str, dict[str, float]]:
    return {name: length_statistics(split, prepared.config.data.max_length) for name, split in prepared.tokenized.items()}
