"""Batching: padding, the training order (with and without length grouping), evaluation order."""

import pytest
import torch

from finetune_pipeline.core.batching import PAD_TO_MULTIPLE_OF, TokenizedSplit, evaluation_batches, training_steps


def training_batches(lengths: list[int], batch_size: int, accumulation: int, seed: int, epoch: int,
                     group_by_length: bool) -> list[list[int]]:
    """The epoch's micro-batches in the order the loop sees them: training_steps' steps, one after another."""
    steps = training_steps(lengths, batch_size, accumulation, seed, epoch, group_by_length)
    return [micro_batch for step in steps for micro_batch in step]


def token_split(input_ids: list[list[int]], labels: list[int], pad_token_id: int = 0) -> TokenizedSplit:
    return TokenizedSplit(input_ids, labels, pad_token_id, untruncated_lengths=[len(ids) for ids in input_ids])


def padded(rows: list[list[int]], width: int, pad: int) -> list[list[int]]:
    return [row + [pad] * (width - len(row)) for row in rows]


def flat(batches: list[list[int]]) -> list[int]:
    return [index for batch in batches for index in batch]


def random_lengths(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 200, (count,), generator=generator).tolist()


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize(("n", "batch", "accumulation"), [(10, 3, 1), (16, 4, 2), (7, 1, 3), (5, 8, 1), (1, 1, 1), (203, 4, 5)])
def test_training_batches_cover_every_index_once_and_only_the_last_step_is_short(n, batch, accumulation, group_by_length):
    batches = training_batches(random_lengths(n, 0), batch, accumulation, seed=1, epoch=0, group_by_length=group_by_length)
    assert sorted(flat(batches)) == list(range(n))
    assert all(1 <= len(b) <= batch for b in batches)
    step = batch * accumulation
    steps = [flat(batches[start : start + accumulation]) for start in range(0, len(batches), accumulation)]
    assert all(len(s) == step for s in steps[:-1])  # micro-batches line up with optimizer steps
    assert 1 <= len(steps[-1]) <= step


@pytest.mark.parametrize("group_by_length", [False, True])
def test_training_batches_depend_only_on_their_arguments(group_by_length):
    lengths = random_lengths(50, 1)
    plan = lambda seed, epoch: training_batches(lengths, 4, 2, seed, epoch, group_by_length)  # noqa: E731
    assert plan(5, 2) == plan(5, 2)
    assert plan(5, 2) != plan(5, 3)
    assert plan(5, 2) != plan(6, 2)
    state = torch.get_rng_state()
    plan(1, 1)
    assert torch.equal(state, torch.get_rng_state()), "the global RNG must not be consumed"


@pytest.mark.parametrize("group_by_length", [False, True])
def test_optimizer_steps_depend_on_the_effective_batch_only(group_by_length):
    """batch 2 x accumulation 4 must put the same examples in each optimizer step as batch 8 x 1."""
    lengths = random_lengths(203, 2)

    def steps(batch: int, accumulation: int) -> list[list[int]]:
        batches = training_batches(lengths, batch, accumulation, seed=3, epoch=1, group_by_length=group_by_length)
        return [sorted(flat(batches[i : i + accumulation])) for i in range(0, len(batches), accumulation)]

    assert steps(8, 1) == steps(2, 4) == steps(1, 8) == steps(4, 2)
    assert steps(8, 1) != steps(3, 3)


def test_grouping_by_length_cuts_padding_keeps_randomness_and_puts_the_longest_first():
    lengths = random_lengths(800, 4)

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = training_batches(lengths, 8, 1, seed=0, epoch=0, group_by_length=False)
    grouped = training_batches(lengths, 8, 1, seed=0, epoch=0, group_by_length=True)
    assert padded_tokens(grouped) < 0.7 * padded_tokens(plain)
    assert max(lengths) in [lengths[i] for i in grouped[0]]
    # still shuffled: batch lengths are not simply sorted over the epoch, and epochs differ
    batch_maxima = [max(lengths[i] for i in b) for b in grouped]
    assert batch_maxima != sorted(batch_maxima, reverse=True)
    assert grouped != training_batches(lengths, 8, 1, seed=0, epoch=1, group_by_length=True)


def test_without_grouping_the_order_is_a_plain_permutation_independent_of_batch_size():
    lengths = random_lengths(37, 5)
    orders = [flat(training_batches(lengths, b, 1, seed=11, epoch=2, group_by_length=False)) for b in (1, 2, 8, 37, 64)]
    assert all(order == orders[0] for order in orders)
    assert orders[0] != sorted(orders[0])


def test_batch_pads_to_the_longest_in_the_batch_rounded_up_to_a_multiple_of_8():
    split = token_split([[5, 6, 7], [8], list(range(20, 30)), [14, 15]], [1, 0, 2, 1], pad_token_id=99)
    batch = split.batch([0, 1, 3])
    # longest among the chosen rows is 3 -> 8 (row 2, length 10, is not in this batch: no padding to 16)
    assert PAD_TO_MULTIPLE_OF == 8
    assert batch.input_ids.tolist() == padded([[5, 6, 7], [8], [14, 15]], 8, 99)
    assert batch.attention_mask.tolist() == padded([[1, 1, 1], [1], [1, 1]], 8, 0)
    assert batch.labels.tolist() == [1, 0, 1]
    assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.labels.dtype == torch.long
    assert split.batch([2, 0]).input_ids.shape == (2, 16)


def test_attention_mask_marks_exactly_the_padding_even_when_the_pad_id_occurs_in_text():
    split = token_split([[0, 4, 0], [7, 0, 7, 7, 1]], [0, 1], pad_token_id=0)
    batch = split.batch([1, 0])
    assert batch.input_ids.tolist() == padded([[7, 0, 7, 7, 1], [0, 4, 0]], 8, 0)
    assert batch.attention_mask.sum(dim=1).tolist() == [5, 3]
    assert batch.labels.tolist() == [1, 0]


def test_evaluation_batches_cover_every_index_longest_first():
    lengths = [3, 9, 1, 7, 7, 2, 5, 4, 8, 6, 1]
    batches = evaluation_batches(lengths, 4)
    assert sorted(flat(batches)) == list(range(len(lengths)))
    assert [lengths[i] for i in flat(batches)] == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [4, 4, 3]


def test_tokenize_counts_the_tokens_a_long_text_loses_and_remembers_a_split(tiny_backbone_dir):
    from transformers import AutoTokenizer

    from finetune_pipeline.core.batching import tokenize_split
    from finetune_pipeline.core.data import Example

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    examples = [Example("good movie", "pos", 2), Example(" ".join(["bad"] * 20), "neg", 3)]
    split = tokenize_split(examples, ["neg", "pos"].index, tokenizer, max_length=8)
    assert [len(ids) for ids in split.input_ids] == [4, 8]  # [CLS] good movie [SEP]; cut to 8 with its [SEP]
    assert split.untruncated_lengths == [4, 22]  # 20 words and the two special tokens
    assert split.labels == [1, 0]
    # a sweep's next member tokenizes the same texts again: the ids come from memory, unchanged
    again = tokenize_split([Example(e.text, e.label, e.line) for e in examples], ["neg", "pos"].index, tokenizer, 8)
    assert again.input_ids is split.input_ids
    assert tokenize_split(examples, ["neg", "pos"].index, tokenizer, 16).input_ids is not split.input_ids
