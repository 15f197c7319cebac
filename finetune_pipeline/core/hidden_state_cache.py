"""Cached hidden states: with training.train_top_layers K, the frozen lower layers run once per text.

The embeddings and the lower L-K layers are frozen and in eval mode, so what they compute for a text is the same
in every epoch and every run that shares the backbone, the layer index and the token ids. We compute it once
per split (inference mode, batches sorted by length), keep it on disk under a key made of everything that
determines it, and train the top K layers and the head from there: the lower layers never run again.

How it is stored: each split is one entry folder holding
    states.npy   (all tokens of all texts, hidden) in float16, the texts one after another without padding
    offsets.npy  (texts + 1,) int64: text i's tokens are rows offsets[i]:offsets[i+1]
    entry.json   the key, the shapes and the sha256 of states.npy, checked on every read
No padding is stored (texts vary from a few tokens to max_length), and float16 halves float32's size; both
files are memory-mapped, so a batch reads just its rows and RAM never holds a split. float16 keeps 11 bits of
each value (the lower layers' output is LayerNorm'ed, |x| < 100 for MiniLM): `python
benchmarks/bench_partial_fine_tuning.py --runs E2 --float32-states` measured scores within seed noise of float32
storage (benchmarks/README.md).
"""

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from finetune_pipeline.core.batching import PAD_TO_MULTIPLE_OF, TokenizedSplit, evaluation_batches
from finetune_pipeline.core.device import Placement, Precision, autocast
from finetune_pipeline.core.feature_cache import tokens_sha256
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runtime.distributed import barrier, my_share, progress_bar_disabled
from finetune_pipeline.runtime.faults import fault_point
from finetune_pipeline.runtime.files import read_json_object, write_json
from finetune_pipeline.runtime.run_log import log_event

HIDDEN_STATE_FORMAT_VERSION = 1
STORAGE_DTYPE = np.float16  # tests store float32 to show that the cache itself changes nothing
STATES_FILE, OFFSETS_FILE, ENTRY_FILE = "states.npy", "offsets.npy", "entry.json"


@dataclass
class HiddenStateBatch:
    hidden_states: torch.Tensor  # (batch, seq, hidden) float32, what enters the first trained layer
    attention_mask: torch.Tensor  # (batch, seq)
    labels: torch.Tensor  # as TokenBatch's
    first_trained_layer: int

    def to(self, device: torch.device) -> "HiddenStateBatch":
        return HiddenStateBatch(self.hidden_states.to(device), self.attention_mask.to(device), self.labels.to(device),
                                self.first_trained_layer)

    def logits(self, model: "TextClassifier | DistributedDataParallel") -> torch.Tensor:
        """The top layers and the head: the lower layers ran once, when the states were cached."""
        return model(hidden_states=self.hidden_states, attention_mask=self.attention_mask,
                     first_trained_layer=self.first_trained_layer)


@dataclass
class HiddenStateSplit:
    """A split as the hidden states entering the first trained layer, memory-mapped from the cache."""

    states: np.ndarray  # (tokens, hidden), read-only memory map
    offsets: np.ndarray  # (texts + 1,)
    labels: list[Any]  # as TokenizedSplit's
    first_trained_layer: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def batch(self, indices: list[int]) -> HiddenStateBatch:
        """Padded like a TokenBatch (to the longest text, rounded up to a multiple of 8), so that the top layers
        see the shapes they would see without the cache."""
        lengths = [int(self.offsets[index + 1] - self.offsets[index]) for index in indices]
        longest = math.ceil(max(lengths) / PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
        hidden_states = torch.zeros(len(indices), longest, self.states.shape[1])
        attention_mask = torch.zeros(len(indices), longest, dtype=torch.long)
        for row, (index, length) in enumerate(zip(indices, lengths, strict=True)):
            start = int(self.offsets[index])
            hidden_states[row, :length] = torch.from_numpy(np.array(self.states[start : start + length],
                                                                    dtype=np.float32))  # a copy, writable
            attention_mask[row, :length] = 1
        labels = torch.tensor([self.labels[index] for index in indices])  # as TokenizedSplit.batch makes them
        return HiddenStateBatch(hidden_states, attention_mask, labels, self.first_trained_layer)


def hidden_state_key(split: TokenizedSplit, backbone: str, backbone_sha256: str, first_trained_layer: int,
                     precision: Precision, device: torch.device) -> dict[str, Any]:
    """Everything that determines the stored states (the token ids stand for the data, tokenizer and max_length)."""
    return {
        "format": HIDDEN_STATE_FORMAT_VERSION,
        "backbone": backbone,
        "backbone_sha256": backbone_sha256,
        "layer": first_trained_layer,
        "precision": precision.used,
        "device": device.type,
        "storage": np.dtype(STORAGE_DTYPE).name,
        "tokens_sha256": tokens_sha256(split),
        "examples": len(split),
    }


def entry_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"hidden-{digest[:32]}"


def cached_hidden_states(
    model: TextClassifier, split: TokenizedSplit, key: dict[str, Any], cache_dir: Path, batch_size: int,
    placement: Placement,
) -> tuple[HiddenStateSplit, str, Path]:
    """(the split's hidden states, "hit" | "miss" | "rebuilt: <why>", the entry's folder): read from the cache,
    or computed once (in every process, each its share of the batches) and stored."""
    path = entry_path(cache_dir, key)
    status = "miss" if not path.exists() else None
    if status is None:
        problem = verify(path, key)
        status = "hit" if problem is None else f"rebuilt: {problem}"
    if status != "hit":
        started = time.perf_counter()
        store(model, split, key, path, batch_size, placement)
        log_event("hidden_state_extraction", layer=key["layer"], examples=len(split),
                  seconds=time.perf_counter() - started)
    states, offsets = open_entry(path)
    return HiddenStateSplit(states, offsets, list(split.labels), key["layer"]), status, path


def open_entry(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(path / STATES_FILE, mmap_mode="r"), np.load(path / OFFSETS_FILE)


def verify(path: Path, key: dict[str, Any]) -> str | None:
    """None when the entry at path is intact and made for key, else why not: it is never trusted unchecked."""
    try:
        entry = read_json_object(path / ENTRY_FILE)
        if entry.get("key") != key:
            return "made for other inputs"
        states, offsets = open_entry(path)
    except (OSError, ValueError) as error:
        return f"unreadable ({error})"
    if len(offsets) != key["examples"] + 1 or states.shape[0] != offsets[-1]:
        return "wrong shape"
    if file_sha256(path / STATES_FILE) != entry.get("states_sha256"):
        return "contents do not match their checksum"
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def store(
    model: TextClassifier, split: TokenizedSplit, key: dict[str, Any], path: Path, batch_size: int,
    placement: Placement,
) -> None:
    """Compute the states into a temporary folder beside path, then rename it into place: a run killed midway
    leaves no entry that looks complete. Under torchrun (one machine) every process writes its batches' rows
    into the same memory-mapped file, which rank 0 created."""
    offsets = np.concatenate([[0], np.cumsum(split.lengths)]).astype(np.int64)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        if placement.processes.is_main:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            np.save(temporary / OFFSETS_FILE, offsets)
            np.lib.format.open_memmap(temporary / STATES_FILE, mode="w+", dtype=STORAGE_DTYPE,
                                      shape=(int(offsets[-1]), model.backbone.config.hidden_size)).flush()
    except OSError as err:
        raise UserInputError(f"output.cache_dir '{path.parent}': cannot write the hidden-state cache "
                             f"({err.strerror}); fix the folder or set training.cache_features to false") from None
    barrier()
    states = np.load(temporary / STATES_FILE, mmap_mode="r+")
    extract_into(states, offsets, model, split, key["layer"], batch_size, placement)
    states.flush()
    del states
    barrier()
    if placement.processes.is_main:
        write_json(temporary / ENTRY_FILE, {"key": key, "states_sha256": file_sha256(temporary / STATES_FILE)})
        shutil.rmtree(path, ignore_errors=True)  # an entry found unusable
        os.replace(temporary, path)
    barrier()  # the others wait until the entry is in place


@torch.inference_mode()
def extract_into(
    states: np.ndarray, offsets: np.ndarray, model: TextClassifier, split: TokenizedSplit, first_trained_layer: int,
    batch_size: int, placement: Placement,
) -> None:
    """The hidden states entering first_trained_layer, each text's real tokens at its offsets."""
    model.eval()
    largest = np.finfo(STORAGE_DTYPE).max
    # longest first: out-of-memory shows at once; under torchrun each process takes its share of the batches
    batches = my_share(evaluation_batches(split.lengths, batch_size), placement.processes)
    for indices in tqdm(batches, desc=f"hidden states (layers 0-{first_trained_layer - 1})", unit="batch",
                        leave=False, disable=progress_bar_disabled()):
        batch = split.batch(indices).to(placement.device)
        with autocast(placement.device, placement.precision):
            hidden = model.lower_hidden_states(batch.input_ids, batch.attention_mask, first_trained_layer)
        hidden = hidden.float().cpu().numpy()
        if np.abs(hidden).max() > largest:
            raise RuntimeError(f"the hidden states entering layer {first_trained_layer} exceed what "
                               f"{np.dtype(STORAGE_DTYPE).name} holds; set training.cache_features to false")
        for row, index in enumerate(indices):
            start, end = offsets[index], offsets[index + 1]
            states[start:end] = hidden[row, : end - start]
        fault_point("extraction")


def estimated_bytes(split: TokenizedSplit, hidden_size: int) -> int:
    """What a split's entry takes on disk."""
    return sum(split.lengths) * hidden_size * np.dtype(STORAGE_DTYPE).itemsize + 8 * (len(split) + 1)
