"""The resolution of an evaluation: what one example is worth.

A split of n texts can only tell scores apart in steps of about 1/n: one more correct answer moves
accuracy by exactly 1/n (macro-F1 by roughly as much). With 31 validation texts that step is 3.2
points, and a difference of one or two examples is no evidence of anything, whatever the seeds say.

A regression metric (RMSE, MAE, a correlation) has no such step: every prediction moves it a little. There only
repeats with other seeds tell an effect from noise.
"""

from finetune_pipeline.core.config import CONTINUOUS_METRICS

# A difference worth fewer examples than this is below the resolution of the split.
RESOLUTION_EXAMPLES = 3


def one_example(size: int) -> float:
    """How much one example moves the score of a split of `size` texts (exactly, for accuracy)."""
    return 1.0 / size


def in_examples(difference: float, size: int, metric: str) -> float | None:
    """A score difference expressed as a number of examples of a split of `size` texts; None for a continuous
    metric."""
    return None if metric in CONTINUOUS_METRICS else difference * size


def below_resolution(difference: float, size: int, metric: str) -> bool:
    examples = in_examples(difference, size, metric)
    return examples is not None and abs(examples) < RESOLUTION_EXAMPLES - 1e-9  # 3 examples exactly is not below


def example_worth(size: int, metric: str) -> str:
    """'one example = 0.0007 of accuracy (0.07 points)'."""
    if metric in CONTINUOUS_METRICS:
        return f"no step per example: {metric} is continuous; repeats with other seeds measure its noise"
    worth = one_example(size)
    exactly = "" if metric == "accuracy" else "about "
    return f"one example = {exactly}{worth:.4f} of {metric} ({worth * 100:.2f} points)"


def describe_resolution(split: str, size: int, metric: str) -> str:
    """'val: 1383 texts, one example = 0.0007 of accuracy (0.07 points)'."""
    return f"{split}: {size} texts, {example_worth(size, metric)}"
