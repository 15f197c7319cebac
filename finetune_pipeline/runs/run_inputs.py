"""What the training loop reads, as the training mode says: token ids, or what the frozen part of the model
computed once per text and the cache keeps (pooled features of a frozen backbone, hidden states entering the
first trained layer). evaluate reads a file the same way, so that it scores what the run scored."""

from functools import partial
from pathlib import Path

import torch

from finetune_pipeline.core.batching import InputSplit, TokenizedSplit
from finetune_pipeline.core.config import Config
from finetune_pipeline.core.device import Placement
from finetune_pipeline.core.feature_cache import Found, FeatureSplit, extract_features, extract_missing
from finetune_pipeline.core.hidden_state_cache import cached_hidden_states, hidden_state_key
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.training_mode import Cached, TrainingMode
from finetune_pipeline.runs.preparation import SPLIT_NAMES, PreparedRun, look_up_features
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime.run_log import log_event

SplitInputs = dict[str, tuple[InputSplit, str | None]]  # split -> (what the loop reads, the cache's status or None)


def training_inputs(prepared: PreparedRun, metrics: RunMetrics) -> list[InputSplit]:
    """train, val and test as the training loop takes them; the cache's status per split goes into metrics."""
    inputs = mode_inputs(prepared.mode, prepared.model, prepared.config, prepared.placement, prepared.backbone_sha256,
                         prepared.tokenized, (prepared.feature_keys, prepared.cached_features))
    statuses = {name: status for name, (_, status) in inputs.items()}
    match prepared.mode.cached:
        case Cached.POOLED_FEATURES:
            metrics.feature_cache = statuses
        case Cached.HIDDEN_STATES:
            metrics.hidden_state_cache = statuses
    return [inputs[name][0] for name in SPLIT_NAMES]


def mode_inputs(
    mode: TrainingMode, model: TextClassifier, config: Config, placement: Placement, backbone_sha256: str,
    tokenized: dict[str, TokenizedSplit], looked_up: tuple[dict, Found] | None = None,
) -> SplitInputs:
    """Each split as the mode reads it: from the cache, or computed split by split and stored (a split's cached
    values depend on nothing but the split: evaluate recomputes exactly what a run computed). looked_up: the
    feature cache's keys and entries, when preparation already read them."""
    match mode.cached:
        case Cached.POOLED_FEATURES:
            keys, found = looked_up or look_up_features(config, tokenized, backbone_sha256, placement)
            return cached_feature_splits(model, config, placement, tokenized, keys, found)
        case Cached.HIDDEN_STATES:
            return cached_hidden_state_splits(model, config, placement, backbone_sha256,
                                              mode.first_trained_layer, tokenized)
        case Cached.NOTHING:
            return {name: (split, None) for name, split in tokenized.items()}


def cached_feature_splits(model: TextClassifier, config: Config, placement: Placement,
                          tokenized: dict[str, TokenizedSplit], keys: dict, found: Found) -> SplitInputs:
    """Each split's pooled backbone features, from the cache or computed once; with the cache status."""
    extract = partial(extract_features, model, batch_size=config.training.eval_batch_size, placement=placement)
    filled = extract_missing(Path(config.output.cache_dir), keys, found, tokenized, extract)
    result = {}
    for name, (features, status, path) in filled.items():
        split = tokenized[name]
        log_event("feature_cache", split=name, status=status, examples=len(split), path=path)
        result[name] = (FeatureSplit(features, torch.tensor(split.labels), split.lengths), status)
    return result


def cached_hidden_state_splits(model: TextClassifier, config: Config, placement: Placement, backbone_sha256: str,
                               first_trained_layer: int, tokenized: dict[str, TokenizedSplit]) -> SplitInputs:
    """Each split's hidden states entering the first trained layer, from the cache or computed once."""
    result = {}
    for name, split in tokenized.items():
        key = hidden_state_key(split, config.model.backbone, backbone_sha256, first_trained_layer,
                               placement.precision, placement.device)
        states, status, path = cached_hidden_states(model, split, key, Path(config.output.cache_dir),
                                                    config.training.eval_batch_size, placement)
        log_event("hidden_state_cache", split=name, status=status, examples=len(split), layer=key["layer"],
                  mib=states.states.nbytes / 2**20, path=path)
        result[name] = (states, status)
    return result
