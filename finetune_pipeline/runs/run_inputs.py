"""What the training loop reads, as the training mode says: token ids, or what the frozen part of the model
computed once per text and the cache keeps (pooled features of a frozen backbone, hidden states entering the
first trained layer)."""

from functools import partial
from pathlib import Path

import torch

from finetune_pipeline.core.batching import InputSplit
from finetune_pipeline.core.feature_cache import FeatureSplit, extract_features, extract_missing
from finetune_pipeline.core.hidden_state_cache import HiddenStateSplit, cached_hidden_states, hidden_state_key
from finetune_pipeline.core.training_mode import Cached
from finetune_pipeline.runs.preparation import SPLIT_NAMES, PreparedRun
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime.run_log import log_event


def training_inputs(prepared: PreparedRun, metrics: RunMetrics) -> list[InputSplit]:
    """train, val and test as the training loop takes them; the cache's status per split goes into metrics."""
    match prepared.mode.cached:
        case Cached.POOLED_FEATURES:
            inputs = cached_feature_splits(prepared)
            metrics.feature_cache = {name: status for name, (_, status) in inputs.items()}
        case Cached.HIDDEN_STATES:
            inputs = cached_hidden_state_splits(prepared)
            metrics.hidden_state_cache = {name: status for name, (_, status) in inputs.items()}
        case Cached.NOTHING:
            return [prepared.tokenized[name] for name in SPLIT_NAMES]
    return [inputs[name][0] for name in SPLIT_NAMES]


def cached_feature_splits(prepared: PreparedRun) -> dict[str, tuple[FeatureSplit, str]]:
    """Each split's pooled backbone features, from the cache or computed once; with the cache status."""
    config = prepared.config
    extract = partial(extract_features, prepared.model, batch_size=config.training.eval_batch_size,
                      placement=prepared.placement)
    found = extract_missing(Path(config.output.cache_dir), prepared.feature_keys, prepared.cached_features,
                            prepared.tokenized, extract)
    result = {}
    for name, (features, status, path) in found.items():
        split = prepared.tokenized[name]
        log_event("feature_cache", split=name, status=status, examples=len(split), path=path)
        result[name] = (FeatureSplit(features, torch.tensor(split.labels), split.lengths), status)
    return result


def cached_hidden_state_splits(prepared: PreparedRun) -> dict[str, tuple[HiddenStateSplit, str]]:
    """Each split's hidden states entering the first trained layer, from the cache or computed once."""
    config, result = prepared.config, {}
    for name, split in prepared.tokenized.items():
        key = hidden_state_key(split, config.model.backbone, prepared.backbone_sha256, prepared.mode.first_trained_layer,
                               prepared.placement.precision, prepared.placement.device)
        states, status, path = cached_hidden_states(prepared.model, split, key, Path(config.output.cache_dir),
                                                    config.training.eval_batch_size, prepared.placement)
        log_event("hidden_state_cache", split=name, status=status, examples=len(split), layer=key["layer"],
                  mib=states.states.nbytes / 2**20, path=path)
        result[name] = (states, status)
    return result


