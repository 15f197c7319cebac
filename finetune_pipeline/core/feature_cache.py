"""Frozen features: a frozen backbone is a fixed function, so run it once per text and keep the result.

With freeze_backbone=true every epoch would push the same texts through the same frozen backbone
and get the same pooled vectors. Instead we compute them once (inference mode, large batches sorted
by length), train the head on them, and store them on disk under a key made of everything that
determines them. The next run that changes only the head or the optimisation (hidden_dim, dropout,
learning rate, epochs, batch size, ...) finds them there and skips the backbone entirely.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from finetune_pipeline.core.batching import TokenizedSplit, evaluation_batches
from finetune_pipeline.core.device import Placement, Precision, autocast
from finetune_pipeline.core.freeze_proof import tensor_sha256
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runtime.distributed import gather_rows, my_share, progress_bar_disabled, world
from finetune_pipeline.runtime.faults import fault_point
from finetune_pipeline.runtime.files import load_checkpoint, save_torch
from finetune_pipeline.runtime.run_log import log_event

CACHE_FORMAT_VERSION = 2  # 2: each split's features extracted alone (1 mixed the splits in one pass)


@dataclass
class FeatureBatch:
    features: torch.Tensor  # (batch, hidden) pooled backbone output
    labels: torch.Tensor  # as TokenBatch's

    def to(self, device: torch.device) -> "FeatureBatch":
        return FeatureBatch(self.features.to(device), self.labels.to(device))

    def logits(self, model: "TextClassifier | DistributedDataParallel") -> torch.Tensor:
        """The head alone: the backbone already ran, once, when the features were made.

        In float32 whatever the run's precision: the cached features are float32, and autocast would only
        add casts around the head's two small matmuls (they cost more than the matmuls themselves).
        """
        with torch.autocast(self.features.device.type, enabled=False):
            return model(features=self.features)


@dataclass
class FeatureSplit:
    features: torch.Tensor  # (examples, hidden), float32
    labels: torch.Tensor  # (examples,)
    lengths: list[int]  # token counts of the texts, so batches group exactly as without the cache

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> FeatureBatch:
        # one index tensor for both lookups: indexing with a Python list converts it on every call
        rows = torch.tensor(indices)
        return FeatureBatch(self.features.index_select(0, rows), self.labels.index_select(0, rows))


@torch.inference_mode()
def extract_features(
    model: TextClassifier, split: TokenizedSplit, batch_size: int, placement: Placement
) -> torch.Tensor:
    """Pooled backbone features for every text, (examples, hidden), in the split's order."""
    model.eval()
    features = torch.empty(len(split), model.backbone.config.hidden_size)
    # longest first: out-of-memory shows at once; under torchrun each process takes its share of the batches
    batches = my_share(evaluation_batches(split.lengths, batch_size), placement.processes)
    for indices in tqdm(batches, desc="backbone features", unit="batch", leave=False,
                        disable=progress_bar_disabled()):
        batch = split.batch(indices).to(placement.device)
        with autocast(placement.device, placement.precision):
            pooled = model.features(batch.input_ids, batch.attention_mask)  # (batch, hidden)
        features[indices] = pooled.float().cpu()
        fault_point("extraction")
    return gather_rows(features, batches)


def tokens_sha256(split: TokenizedSplit) -> str:
    """One hash of every text's token ids: it changes with the data, the tokenizer and max_length."""
    digest = hashlib.sha256()
    for ids in split.input_ids:
        digest.update(np.asarray([len(ids), *ids], dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_key(
    split: TokenizedSplit, backbone: str, backbone_sha256: str, pooling: str, precision: Precision, device: torch.device
) -> dict[str, Any]:
    """Everything that determines the features. The token ids stand for the data files, the tokenizer and
    max_length at once: two runs whose texts tokenize to the same ids get the same features."""
    return {
        "format": CACHE_FORMAT_VERSION,
        "backbone": backbone,
        "backbone_sha256": backbone_sha256,
        "pooling": pooling,
        "precision": precision.used,
        "device": device.type,
        "tokens_sha256": tokens_sha256(split),
        "examples": len(split),
    }


Found = dict[str, tuple[torch.Tensor | None, str, Path]]  # {split: (features or None, status, entry path)}


def lookup_all(cache_dir: Path, keys: dict[str, dict[str, Any]]) -> Found:
    """Each split's cache entry. status is "hit", "miss", or "rebuilt: <why>" when an entry was there but
    unusable (corrupt, truncated, or made for other inputs): a cache entry is never trusted without checking."""
    return {name: lookup(cache_dir, key) for name, key in keys.items()}


def extract_missing(
    cache_dir: Path, keys: dict[str, dict[str, Any]], found: Found, splits: dict[str, TokenizedSplit],
    extract: Callable[[TokenizedSplit], torch.Tensor],
) -> dict[str, tuple[torch.Tensor, str, Path]]:
    """found with the missing features filled in and stored.

    Each split is extracted alone, in its own batches: under bf16 a text's features depend a little on the
    batch it ran in, so features made from one split alone are what its cache key says, the same for every run
    and for `finetune evaluate` on that split's file.
    """
    found = dict(found)
    for name, (features, status, path) in found.items():
        if features is not None:
            continue
        started = time.perf_counter()
        features = extract(splits[name])
        log_event("feature_extraction", split=name, examples=len(features), seconds=time.perf_counter() - started)
        if world().is_main:  # under torchrun, one process writes
            store(cache_dir, path, keys[name], features)
        found[name] = (features, status, path)
    return found


def lookup(cache_dir: Path, key: dict[str, Any]) -> tuple[torch.Tensor | None, str, Path]:
    """(features or None, "hit" | "miss" | "rebuilt: <why>", the entry's path)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = cache_dir / f"features-{digest[:32]}.pt"
    if not path.exists():
        return None, "miss", path
    features, problem = read_entry(path, key)
    return (features, "hit", path) if features is not None else (None, f"rebuilt: {problem}", path)


def store(cache_dir: Path, path: Path, key: dict[str, Any], features: torch.Tensor) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_torch(path, {"key": key, "features": features, "features_sha256": tensor_sha256(features)})
    except OSError as err:
        raise UserInputError(f"output.cache_dir '{cache_dir}': cannot write the feature cache ({err.strerror}); "
                             "fix the folder or set training.cache_features to false") from None


def read_entry(path: Path, key: dict[str, Any]) -> tuple[torch.Tensor | None, str]:
    """(features, "") when the entry at path is intact and made for this key, else (None, why not)."""
    try:
        entry = load_checkpoint(path)
    except UserInputError as err:
        return None, f"unreadable ({err})"
    if entry.get("key") != key:
        return None, "made for other inputs"
    features = entry.get("features")
    if not isinstance(features, torch.Tensor) or features.shape[0] != key["examples"]:
        return None, "wrong shape"
    if tensor_sha256(features) != entry.get("features_sha256"):
        return None, "contents do not match their checksum"
    return features, ""
