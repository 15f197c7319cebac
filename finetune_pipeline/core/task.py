"""The task: what the head predicts, how it is scored while training (the loss) and after (the metrics), and how a
prediction is decided. Decided here alone; the loop, evaluation, the preflight and the run ask the task.

    single-label classification: one label out of num_labels per text
        head output   num_labels logits
        loss          cross-entropy, each example weighted by its class's weight (training.class_weights)
        decision      the label with the highest logit (argmax)
        metrics       accuracy, macro-F1 (both: higher is better), per class, the confusion matrix
"""

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.utils.class_weight import compute_class_weight

from finetune_pipeline.core.config import Config
from finetune_pipeline.errors import UserInputError

# The most frequent class this many times as frequent as the rarest: the dry run calls the classes imbalanced
# (predicting the frequent one then scores a high accuracy).
IMBALANCE_RATIO = 10.0


@dataclass(frozen=True)
class SingleLabelClassification:
    label_names: list[str]  # label id i is label_names[i]
    metric: str  # training.metric: what val_score and test_score are
    class_weights: list[float] | None = None  # per label id; None: every example weighs 1

    name = "single_label"

    @classmethod
    def of(cls, config: Config, label_names: list[str],
           train_labels: list[int] | None = None) -> "SingleLabelClassification":
        """The task of a run. Its class weights only shape the loss: they are resolved when the train labels are
        given (training), and left out for scoring a trained model."""
        weights = None if train_labels is None else resolve_class_weights(config.training.class_weights, label_names,
                                                                          train_labels)
        return cls(label_names, config.training.metric, weights)

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics every epoch logs, in this order."""
        return ("accuracy", "macro_f1")

    def higher_is_better(self, metric: str) -> bool:  # noqa: ARG002 (every classification metric is a share)
        return True

    def is_better(self, score: float, best: float | None) -> bool:
        """Whether score beats best (None: nothing yet) on this task's metric."""
        return best is None or (score > best if self.higher_is_better(self.metric) else score < best)

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's summed per-example loss, in float32 (the loop divides by the step's example count)."""
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, device=logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum")

    def decide(self, logits: torch.Tensor) -> np.ndarray:
        """Predicted label ids from logits (examples, num_labels)."""
        return logits.argmax(dim=-1).numpy()

    def metrics(self, labels: list[int], predictions: np.ndarray) -> dict[str, Any]:
        return classification_metrics(labels, predictions, self.label_names)

    def class_weight_table(self) -> dict[str, float] | None:
        """label -> weight as recorded in metrics.json; None without class weights."""
        return None if self.class_weights is None else dict(zip(self.label_names, self.class_weights, strict=True))


Task = SingleLabelClassification  # the one task type so far; multi-label and regression will join it


def resolve_class_weights(setting: str | dict[str, float] | None, label_names: list[str],
                          train_labels: list[int]) -> list[float] | None:
    """training.class_weights as one weight per label id. "balanced": n / (classes x n_class), from the train split
    alone (scikit-learn's rule: the weights average 1 over the train examples, so the loss keeps its scale and the
    learning rate its meaning). A mapping: its labels' weights, 1 for a label it leaves out."""
    if setting is None:
        return None
    if setting == "balanced":
        ids = np.arange(len(label_names))
        return [float(weight) for weight in compute_class_weight("balanced", classes=ids, y=np.asarray(train_labels))]
    unknown = sorted(set(setting) - set(label_names))
    if unknown:
        raise UserInputError(f"training.class_weights: {unknown} {'is not a label' if len(unknown) == 1 else 'are not labels'}"
                             f" of the train split; its labels are {label_names}")
    return [float(setting.get(name, 1.0)) for name in label_names]


def label_distribution(labels: list[int], label_names: list[str]) -> dict[str, int]:
    """label -> examples, in label order."""
    counts = Counter(labels)
    return {name: counts.get(index, 0) for index, name in enumerate(label_names)}


def imbalance_warning(train_counts: dict[str, int], config: Config) -> str | None:
    """A warning when the train split's classes are strongly imbalanced and nothing in the config accounts for it."""
    frequent = max(train_counts, key=train_counts.get)
    rare = min(train_counts, key=train_counts.get)
    ratio = train_counts[frequent] / max(train_counts[rare], 1)
    if ratio < IMBALANCE_RATIO:
        return None
    advice = []
    if config.training.class_weights is None:
        advice.append('training.class_weights "balanced" weighs each class inversely to its frequency')
    if config.training.metric == "accuracy":
        advice.append('training.metric "macro_f1" scores every class equally (accuracy mostly measures the frequent '
                      'ones)')
    if not advice:
        return None
    return (f"the classes are imbalanced: '{frequent}' has {train_counts[frequent]} train examples, '{rare}' "
            f"{train_counts[rare]} ({ratio:.0f}x); consider " + "; ".join(advice))


def classification_metrics(labels: list[int], predictions: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    label_ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=label_ids, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=label_ids, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support, strict=True)
        },
        # rows: true label, columns: predicted label, both in label_names order
        "confusion_matrix": confusion_matrix(labels, predictions, labels=label_ids).tolist(),
    }
