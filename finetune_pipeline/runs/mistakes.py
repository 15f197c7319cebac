"""The most confident mistakes: what a student learns most from, and what an engineer reads first.

A confusion matrix says how often the model is wrong; the wrong answers it was surest of say why: a label that is
itself wrong, sarcasm, a negation the model did not read, a text cut at max_length. For val and test the run keeps
the wrong answers, most confident first (Task.mistakes: single-label, the answer and its probability; multi-label,
each wrong label as a false positive or a false negative; regression, the largest errors), with their texts, and
the most frequent confusions. report.html shows them, and `finetune errors RUN` and `Run.errors()` read them back.
"""

from typing import Any

import torch

from finetune_pipeline.core.data import Example
from finetune_pipeline.core.task import Task
from finetune_pipeline.errors import UserInputError

MISTAKES_KEPT = 50  # per split: enough to read, small enough for metrics.json
CONFUSIONS_KEPT = 10
SPLITS = ("val", "test")


def mistakes_record(task: Task, logits: torch.Tensor, targets: list[Any], examples: list[Example],
                    thresholds: torch.Tensor | None) -> dict[str, Any]:
    """One split's: how many wrong answers, the first MISTAKES_KEPT of them with their texts, the confusions."""
    answers, confusions = task.mistakes(logits, targets, thresholds)
    kept = []
    for answer in answers[:MISTAKES_KEPT]:
        example = examples[answer.pop("index")]
        kept.append({"text": example.text, **({"text_pair": example.text_pair} if example.text_pair else {}),
                     "line": example.line, **answer})
    return {"wrong": len(answers), "examples": kept, "confusions": confusions[:CONFUSIONS_KEPT]}


def kept_mistakes(mistakes: dict[str, Any] | None, split: str, count: int, where: str) -> list[dict[str, Any]]:
    """The count most confident mistakes a run kept for split; where: the run, for messages."""
    if split not in SPLITS:
        raise UserInputError(f"split {split!r}: choose val or test")
    if count < 1 or count > MISTAKES_KEPT:
        raise UserInputError(f"{count} mistakes: a run keeps the {MISTAKES_KEPT} most confident of each split; "
                             f"ask for 1 to {MISTAKES_KEPT}")
    if not mistakes:
        raise UserInputError(f"{where}: its metrics.json has no mistakes (a run that did not complete, or one "
                             "recorded before they were kept); train it again with `finetune train --from-run`")
    return mistakes[split]["examples"][:count]
