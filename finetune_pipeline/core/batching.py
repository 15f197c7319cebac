"""Batching: token ids -> padded tensors, and the order in which the training loop sees the examples.

Two ideas save most of the compute on a weak machine:
- dynamic padding: a batch is padded to its own longest text, not to max_length;
- grouping by length: texts of similar length share a batch, so there is little padding at all.
"""

import functools
import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerBase

from finetune_pipeline.core.data import Example
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Label

# Rounding the padded length up to a multiple of 8 leaves few distinct tensor shapes. On a CPU every new
# shape makes oneDNN build and cache new kernels: with lengths 1..256 at batch 1 under bf16 that cache
# grew the process by ~450 MB and made it slower; multiples of 8 kept memory flat and ran 20% faster.
# GPUs' tensor cores also prefer multiples of 8. Padding is masked, so results do not change.
PAD_TO_MULTIPLE_OF = 8

# Length grouping sorts within groups of this many optimizer steps, then shuffles the steps: batches
# of similar lengths, in a random order.
STEPS_PER_LENGTH_GROUP = 50

SPLITS_REMEMBERED = 6  # two sets of train/val/test: a sweep that alternates two max_lengths still hits


class Batch(Protocol):
    """A batch the loop moves to the device and scores: token ids (TokenBatch), cached pooled features
    (feature_cache.FeatureBatch) or cached hidden states (hidden_state_cache.HiddenStateBatch)."""

    labels: torch.Tensor  # (batch,) label ids or numbers, or (batch, labels) of 0/1

    def to(self, device: torch.device) -> "Batch": ...

    def logits(self, model: "TextClassifier | DistributedDataParallel") -> torch.Tensor: ...  # (batch, num_labels)


class InputSplit(Protocol):
    """What training and evaluation read a split from, as the training mode says: its token ids (TokenizedSplit), the
    frozen backbone's cached pooled features (feature_cache.FeatureSplit) or the hidden states entering the first
    trained layer (hidden_state_cache.HiddenStateSplit). All batch alike, so one loop serves every mode."""

    @property
    def lengths(self) -> list[int]: ...  # token counts: batches group by them in both kinds

    def __len__(self) -> int: ...

    def batch(self, indices: list[int]) -> Batch: ...


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (batch, seq) padded to the longest text in this batch
    attention_mask: torch.Tensor  # (batch, seq) 1 for real tokens, 0 for padding
    labels: torch.Tensor  # (batch,) label ids or numbers, or (batch, labels) of 0/1

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def logits(self, model: "TextClassifier | DistributedDataParallel") -> torch.Tensor:
        return model(self.input_ids, self.attention_mask)  # (batch, num_labels)


@dataclass
class TokenizedSplit:
    """A split as token ids (truncated to max_length, not padded) and label ids."""

    input_ids: list[list[int]]
    labels: list[Any]  # targets as the task encodes them: label ids, 0/1 rows, numbers
    pad_token_id: int
    untruncated_lengths: list[int]  # token counts before max_length cut them

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def batch(self, indices: list[int]) -> TokenBatch:
        """Dynamic padding: pad to the longest sequence in the batch (rounded up to a multiple of 8)."""
        sequences = [self.input_ids[index] for index in indices]
        longest = math.ceil(max(len(sequence) for sequence in sequences) / PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
        input_ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, : len(sequence)] = 1
        labels = torch.tensor([self.labels[index] for index in indices])  # int64 ids, or float32 targets
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def tokenize_split(
    examples: list[Example], encode: Callable[[Label], Any], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> TokenizedSplit:
    """Token ids (a text pair in the backbone's own template) and each label as the task encodes it (encode)."""
    texts = tuple(example.text for example in examples)
    pairs = tuple(example.text_pair for example in examples) if examples and examples[0].text_pair is not None else None
    input_ids, untruncated_lengths = encode_texts(tokenizer, texts, max_length, pairs)
    return TokenizedSplit(
        input_ids=input_ids,
        labels=[encode(example.label) for example in examples],
        pad_token_id=tokenizer.pad_token_id,
        untruncated_lengths=untruncated_lengths,
    )


# A sweep's members tokenize the same texts with the same tokenizer: the second member on gets them here.
# The cache holds the tokenizer object itself, so a key can never match another tokenizer's results.
@functools.lru_cache(maxsize=SPLITS_REMEMBERED)
def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: tuple[str, ...], max_length: int, pairs: tuple[str, ...] | None = None
) -> tuple[list[list[int]], list[int]]:
    """(token ids truncated to max_length, token counts before truncation); callers must not modify them.

    With pairs, each text and its pair become one sequence in the backbone's template ([CLS] a [SEP] b [SEP] for
    BERT), the longer of the two cut first. The segment ids (token_type_ids) are left out: sentence-transformers
    backbones such as MiniLM were trained with segment 0 throughout, and position and [SEP] mark the pair."""
    ids_only = {"return_attention_mask": False, "return_token_type_ids": False}  # masks come with padding
    second = {} if pairs is None else {"text_pair": list(pairs)}
    input_ids = tokenizer(list(texts), truncation=True, max_length=max_length, **second, **ids_only)["input_ids"]
    lengths = [len(ids) for ids in input_ids]
    # Only a text that fills max_length can have been cut: tokenize just those again, untruncated, to count.
    # verbose=False: counting long texts is the point here, the "longer than the maximum" warning is not.
    full = [index for index, length in enumerate(lengths) if length == max_length]
    if full:
        second = {} if pairs is None else {"text_pair": [pairs[index] for index in full]}
        untruncated = tokenizer([texts[index] for index in full], truncation=False, verbose=False, **second,
                                **ids_only)
        for index, ids in zip(full, untruncated["input_ids"], strict=True):
            lengths[index] = len(ids)
    return input_ids, lengths


def length_statistics(split: TokenizedSplit, max_length: int) -> dict[str, float]:
    """Token counts before truncation, and how many texts max_length cuts."""
    lengths = np.array(split.untruncated_lengths)
    return {
        "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "truncated": int((lengths > max_length).sum()),
        "truncated_share": float((lengths > max_length).mean()),
    }


def training_steps(
    lengths: list[int], batch_size: int, accumulation: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of micro-batches of example indices; a pure function of its
    arguments.

    Examples are first dealt into optimizer steps of batch_size x accumulation examples, then each step
    is cut into micro-batches. Which examples share a step therefore depends only on the effective
    batch: batch 2 x accumulation 4 sees the same steps as batch 8 x accumulation 1. Only the last
    step of an epoch may be short, and it always comes last.

    With group_by_length, the shuffled examples are sorted by length within groups of
    STEPS_PER_LENGTH_GROUP steps, the full steps are shuffled, and the step holding the longest text
    goes first: an out-of-memory error then comes in the first step, not after an hour.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    step_size = batch_size * accumulation
    if group_by_length:
        longest = max(range(len(order)), key=lambda position: lengths[order[position]])
        order[0], order[longest] = order[longest], order[0]  # the longest text lands in a full step
        group = step_size * STEPS_PER_LENGTH_GROUP
        order = [index for start in range(0, len(order), group)
                 for index in sorted(order[start : start + group], key=lambda index: -lengths[index])]
    steps = [order[start : start + step_size] for start in range(0, len(order), step_size)]
    if group_by_length:
        short_step = [steps.pop()] if len(steps[-1]) < step_size else []
        steps = [steps[position] for position in torch.randperm(len(steps), generator=generator).tolist()]
        if steps:
            first = max(range(len(steps)), key=lambda position: max(lengths[index] for index in steps[position]))
            steps = [steps[first], *steps[:first], *steps[first + 1 :]]
        steps += short_step
    return [[step[start : start + batch_size] for start in range(0, len(step), batch_size)] for step in steps]


def evaluation_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of similar length (sorted, longest first): little padding, and order does not matter."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
