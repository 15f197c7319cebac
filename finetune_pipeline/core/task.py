"""The task: how labels are read, what the head predicts, how it is scored while training (the loss) and after (the
metrics, better when higher or lower), and how a prediction is decided. Decided here alone (the config's `task`);
data reading, the loop, evaluation, the preflight, the run and serving ask the task.

    task           a label is               head outputs    loss                      decision
    single_label   one name                 one per label   cross-entropy             the highest logit
    multi_label    a set of names           one per label   binary cross-entropy      sigmoid >= the label's threshold
    regression     a number                 one             mean squared error        the number, unstandardised

Multi-label thresholds are chosen on the val split after every epoch (the F1-best per label) and kept in the head
(ClassifierHead.thresholds), so they travel with the weights: the best checkpoint holds its own, and test,
evaluate, predict and export use them. A regression target is standardised with the train split's mean and
standard deviation, which the task keeps and every checkpoint records.
"""

import ast
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
)
from sklearn.utils.class_weight import compute_class_weight

from finetune_pipeline.core.config import TASK_METRICS, Config
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runtime.run_log import log_event

# The most frequent class this many times as frequent as the rarest: the dry run calls the classes imbalanced
# (predicting the frequent one then scores a high accuracy).
IMBALANCE_RATIO = 10.0
MISSING_LABEL_SPELLINGS = {"", "nan", "none", "null", "na", "n/a"}
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)  # candidate multi-label thresholds
DEFAULT_THRESHOLD = 0.5
POINTS_KEPT = 1000  # a regression split's (true, predicted) pairs kept in its metrics, for the report's plots
# A single-label column of numbers with at least this many distinct values, some of them fractions, is a score.
REGRESSION_HINT_VALUES = 10

Label = str | tuple[str, ...] | float  # one name, a set of names, a number: as read from the data


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip().lower() in MISSING_LABEL_SPELLINGS)


def as_json(value: Any) -> str:
    """A value as the data holds it, for messages: JSON, text as text."""
    return json.dumps(value, default=str, ensure_ascii=False)


def label_name(value: Any, where: str) -> str:
    """A class name: a string without surrounding whitespace; 1 and 1.0 both become '1', whether a JSON or Parquet
    number or a CSV cell's text (a spreadsheet may write 1.0 where it was given 1)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserInputError(f"{where}: a label must be a string or an integer, got {as_json(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    name = str(value).strip()  # ' positive' and 'positive' are one label
    return re.sub(r"^(-?\d+)\.0+$", r"\1", name)


def sorted_names(names: set[str]) -> list[str]:
    """Label names sorted, numerically when every one is an integer: label id = position."""
    ordered = sorted(names)
    if all(re.fullmatch(r"-?\d+", name) for name in ordered):
        ordered.sort(key=int)
    return ordered


def check_one_spelling(names: list[str], path: str) -> None:
    by_casefold: dict[str, list[str]] = {}
    for name in names:
        by_casefold.setdefault(name.casefold(), []).append(name)
    clashes = [spellings for spellings in by_casefold.values() if len(spellings) > 1]
    if clashes:
        raise UserInputError(
            f"{path}: labels that differ only by upper/lower case: {clashes}; they would become different "
            "classes. Spell each label one way in the data"
        )


def unknown_label_error(label: str, label_names: list[str], split: str, where: str) -> UserInputError:
    close = {name.casefold(): name for name in label_names}.get(label.casefold())
    did_you_mean = f". Did you mean {close!r}?" if close else ""
    return UserInputError(f"{where}: {split} label {label!r} never occurs in the train split (train labels: "
                          f"{label_names}); the model cannot predict a class it never saw{did_you_mean}")


@dataclass(frozen=True)
class SingleLabelClassification:
    label_names: list[str]  # label id i is label_names[i]
    metric: str  # training.metric: what val_score and test_score are
    class_weights: list[float] | None = None  # per label id; None: every example weighs 1

    name: ClassVar[str] = "single_label"
    metric_names: ClassVar[tuple[str, ...]] = TASK_METRICS["single_label"]  # logged every epoch, in this order
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset()
    stratified: ClassVar[bool] = True  # carved splits keep each class's share
    decides_by_threshold: ClassVar[bool] = False  # the head holds per-label thresholds

    # -- reading labels, before the task exists ------------------------------------------------------------------

    @staticmethod
    def read_label(value: Any, where: str, separator: str | None = None) -> str:
        if isinstance(value, (list, tuple, np.ndarray)):
            raise UserInputError(f"{where}: the label is a list ({as_json(list(value))}): several "
                                 'labels per text are a multi-label task; set "task": "multi_label" in the config')
        if missing(value):
            raise UserInputError(f"{where}: missing label ({value!r}); remove the row or label it")
        return label_name(value, where)

    @staticmethod
    def label_space(labels: list[str], path: str, label_column: str) -> list[str]:
        names = sorted_names(set(labels))
        check_one_spelling(names, path)
        numbers = [float(name) for name in names if re.fullmatch(r"-?\d+(\.\d+)?([eE]-?\d+)?", name)]
        if len(numbers) == len(names) >= REGRESSION_HINT_VALUES and any(not n.is_integer() for n in numbers):
            raise UserInputError(
                f"{path}, column '{label_column}': {len(names)} distinct numbers ({names[0]} ... {names[-1]}) would "
                'become as many classes; a numeric target is a regression task: set "task": "regression" in the '
                "config")
        if len(names) < 2:
            raise UserInputError(f"{path}: every row has the label {names}; a classifier needs at least two classes")
        return names

    @staticmethod
    def unknown_labels(label: str, label_names: list[str]) -> list[str]:
        return [] if label in label_names else [label]

    # -- the task of a run ---------------------------------------------------------------------------------------

    @classmethod
    def of(cls, config: Config, label_names: list[str],
           train_labels: list[Label] | None = None) -> "SingleLabelClassification":
        """The task of a run. Its class weights only shape the loss: they are resolved from the train split's labels
        when given (training), and left out for scoring a trained model."""
        task = cls(label_names, config.training.metric)
        if train_labels is None or config.training.class_weights is None:
            return task
        weights = task.resolve_weights(config.training.class_weights, [task.encode(label) for label in train_labels])
        return cls(label_names, config.training.metric, weights)

    def resolve_weights(self, setting: str | dict[str, float], train_targets: list[Any]) -> list[float]:
        """training.class_weights as one weight per label id. "balanced": n / (classes x n_class), from the train
        split alone (scikit-learn's rule: the weights average 1 over the train examples, so the loss keeps its scale
        and the learning rate its meaning). A mapping: its labels' weights, 1 for a label it leaves out."""
        if setting == "balanced":
            ids = np.arange(self.num_outputs)
            return [float(weight) for weight in compute_class_weight("balanced", classes=ids,
                                                                     y=np.asarray(train_targets))]
        return mapped_weights(setting, self.label_names)

    @property
    def num_outputs(self) -> int:
        return len(self.label_names)

    def encode(self, label: str) -> int:
        return self.label_names.index(label)

    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.LOWER_IS_BETTER

    def is_better(self, score: float, best: float | None) -> bool:
        """Whether score beats best (None: nothing yet) on this task's metric."""
        return best is None or (score > best if self.higher_is_better(self.metric) else score < best)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed per-example loss, in float32 (the loop divides by the step's example count)."""
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, device=logits.device)
        return F.cross_entropy(logits.float(), targets, weight=weight, reduction="sum")

    def fit_decision(self, logits: torch.Tensor, targets: list[Any]) -> torch.Tensor | None:
        """What the decision rule learns from val (multi-label thresholds); None: nothing, it is the highest logit."""
        return None

    def decide(self, logits: torch.Tensor, thresholds: torch.Tensor | None = None) -> np.ndarray:
        """Predicted label ids from logits (examples, num_labels)."""
        return logits.argmax(dim=-1).numpy()

    def metrics(self, logits: torch.Tensor, targets: list[Any], thresholds: torch.Tensor | None = None
                ) -> dict[str, Any]:
        return self.scores(self.decide(logits), targets)

    def scores(self, predicted: np.ndarray, targets: list[Any]) -> dict[str, Any]:
        """The metrics of decisions (label ids), whoever made them: the model, or a baseline."""
        return classification_metrics([int(target) for target in targets], predicted, self.label_names)

    # -- calibration (calibration.py): one temperature for every class keeps the argmax ------------------------

    @property
    def temperature_shape(self) -> tuple[int, ...] | None:
        return (1,)

    @staticmethod
    def target_tensor(targets: list[Any]) -> torch.Tensor:
        return torch.tensor([int(target) for target in targets])

    @staticmethod
    def negative_log_likelihood(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), truth)

    @staticmethod
    def confidences(logits: torch.Tensor, targets: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(the predicted class's probability, whether it is right) per example."""
        probabilities = logits.float().softmax(dim=-1)
        confidence, predicted = probabilities.max(dim=-1)
        return confidence.numpy(), (predicted.numpy() == np.asarray(targets, dtype=int)).astype(float)

    @staticmethod
    def calibrated_thresholds(thresholds: torch.Tensor | None, temperature: torch.Tensor) -> torch.Tensor | None:
        return thresholds

    def baseline_predictors(self, seed: int) -> dict[str, Any]:
        """What answers without reading the text (scikit-learn's dummy estimators, fit on the train targets)."""
        return {"most frequent class": DummyClassifier(strategy="most_frequent"),
                "stratified guess": DummyClassifier(strategy="stratified", random_state=seed)}

    def predictions(self, logits: torch.Tensor, thresholds: torch.Tensor | None = None
                    ) -> list[tuple[Any, dict[str, float] | None]]:
        """(what to output, every label's probability) per example: the most probable class, softmax."""
        probabilities = logits.softmax(dim=-1).tolist()
        return [(self.label_names[label_id], dict(zip(self.label_names, row, strict=True)))
                for label_id, row in zip(self.decide(logits).tolist(), probabilities, strict=True)]

    def mistakes(self, logits: torch.Tensor, targets: list[Any], thresholds: torch.Tensor | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the wrong answers, most confident first: index, true, predicted, probability; the most frequent
        (true, predicted) pairs among them, with their counts)."""
        confidence, predicted = logits.float().softmax(dim=-1).max(dim=-1)
        truth = torch.tensor([int(target) for target in targets])
        wrong = torch.nonzero(predicted != truth).flatten().tolist()
        wrong.sort(key=lambda index: -confidence[index].item())
        names = self.label_names
        answers = [{"index": index, "true": names[truth[index]], "predicted": names[predicted[index]],
                    "probability": confidence[index].item()} for index in wrong]
        pairs = Counter((answer["true"], answer["predicted"]) for answer in answers)
        return answers, [{"true": true, "predicted": guess, "count": count} for (true, guess), count in
                         pairs.most_common()]

    def distribution(self, targets: list[Any]) -> dict[str, int]:
        """label -> examples, in label order."""
        counts = Counter(targets)
        return {name: counts.get(index, 0) for index, name in enumerate(self.label_names)}

    def record(self) -> dict[str, Any]:
        """What a checkpoint (and an export) keeps of the task, to rebuild it when the model is loaded (loaded_task)."""
        return {"type": self.name, "metric": self.metric}

    def class_weight_table(self) -> dict[str, float] | None:
        """label -> weight as recorded in metrics.json; None without class weights."""
        return None if self.class_weights is None else dict(zip(self.label_names, self.class_weights, strict=True))


@dataclass(frozen=True)
class MultiLabelClassification(SingleLabelClassification):
    """class_weights here are BCE's positive weights: how much a label's positive examples count against its
    negative ones ("balanced": negatives / positives in the train split)."""

    name: ClassVar[str] = "multi_label"
    metric_names: ClassVar[tuple[str, ...]] = TASK_METRICS["multi_label"]
    stratified: ClassVar[bool] = False  # a set of labels has no class to stratify by: the carving is random
    decides_by_threshold: ClassVar[bool] = True

    @staticmethod
    def read_label(value: Any, where: str, separator: str | None = None) -> tuple[str, ...]:
        """A list (JSON Lines, Parquet, datasets), a cell holding a JSON or Python list ('["a", "b"]', "[3, 15]": what
        pandas writes for a list column), or a cell split on data.label_separator ('a|b')."""
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, str):
            value = split_label_cell(value, where, separator)
        elif not isinstance(value, (list, tuple)):
            if missing(value):
                raise UserInputError(f"{where}: missing labels ({value!r}); remove the row or label it")
            value = [value]
        names = tuple(sorted_names({label_name(item, where) for item in value} - {""}))
        if not names:
            raise UserInputError(f"{where}: an empty set of labels; every text needs at least one label (a 'none' "
                                 "or 'neutral' label of its own, if texts may have none)")
        return names

    @staticmethod
    def label_space(labels: list[tuple[str, ...]], path: str, label_column: str) -> list[str]:
        names = sorted_names({name for label_set in labels for name in label_set})
        check_one_spelling(names, path)
        if len(names) < 2:
            raise UserInputError(f"{path}: every row has the label {names}; a classifier needs at least two labels")
        return names

    @staticmethod
    def unknown_labels(label: tuple[str, ...], label_names: list[str]) -> list[str]:
        return [name for name in label if name not in label_names]

    def resolve_weights(self, setting: str | dict[str, float], train_targets: list[Any]) -> list[float]:
        """Each label's positive weight. "balanced": its negatives over its positives in the train split (a label on
        1% of the texts gets 99), so that both sides weigh alike; a mapping: as given, 1 for the rest."""
        if setting == "balanced":
            positives = np.asarray(train_targets).sum(axis=0)
            return [float((len(train_targets) - count) / max(count, 1)) for count in positives]
        return mapped_weights(setting, self.label_names)

    def encode(self, label: tuple[str, ...]) -> list[float]:
        return [1.0 if name in label else 0.0 for name in self.label_names]

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy per label, averaged over the labels, summed over the examples: one example weighs
        as much as in single-label training."""
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, device=logits.device)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight, reduction="sum")
        return loss / self.num_outputs

    def fit_decision(self, logits: torch.Tensor, targets: list[Any]) -> torch.Tensor:
        """Each label's threshold: the one of THRESHOLD_GRID with the best F1 on these (val) examples; a label without
        positives among them keeps 0.5."""
        probabilities, truth = logits.sigmoid().numpy(), np.asarray(targets, dtype=bool)
        # every threshold and label at once: (thresholds, examples, labels) decisions -> F1 = 2 tp / (2 tp + fp + fn)
        chosen = probabilities[None] >= THRESHOLD_GRID[:, None, None]
        true_positives = (chosen & truth).sum(axis=1)
        errors = (chosen != truth).sum(axis=1)  # false positives and false negatives
        f1 = np.divide(2 * true_positives, 2 * true_positives + errors,
                       out=np.zeros(true_positives.shape), where=2 * true_positives + errors > 0)
        thresholds = THRESHOLD_GRID[f1.argmax(axis=0)].astype(float)  # argmax: the lowest of equal bests
        for index in np.flatnonzero(~truth.any(axis=0)):
            log_event("warning", message=f"label '{self.label_names[index]}' has no positive example in val: its "
                                         f"threshold stays {DEFAULT_THRESHOLD}")
            thresholds[index] = DEFAULT_THRESHOLD
        return torch.tensor(thresholds.tolist())

    def decide(self, logits: torch.Tensor, thresholds: torch.Tensor | None = None) -> np.ndarray:
        """(examples, labels) of 0/1: each label's probability at or above its threshold."""
        return (logits.sigmoid() >= thresholds.cpu()).numpy().astype(int)

    def metrics(self, logits: torch.Tensor, targets: list[Any], thresholds: torch.Tensor | None = None
                ) -> dict[str, Any]:
        scores = self.scores(self.decide(logits, thresholds), targets)
        for row, threshold in zip(scores["per_class"].values(), thresholds.tolist(), strict=True):
            row["threshold"] = float(threshold)
        return scores

    def scores(self, predicted: np.ndarray, targets: list[Any]) -> dict[str, Any]:
        """The metrics of decisions ((examples, labels) of 0/1), whoever made them: the model, or a baseline."""
        truth, predicted = np.asarray(targets, dtype=int), np.asarray(predicted, dtype=int)
        precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
        return {
            "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(truth, predicted)),  # every label of the text right
            "per_class": {
                name: {"precision": float(p), "recall": float(r), "f1": float(f1_value), "support": int(s)}
                for name, p, r, f1_value, s in zip(self.label_names, precision, recall, f1, support, strict=True)
            },
        }

    @property
    def temperature_shape(self) -> tuple[int, ...] | None:
        return (self.num_outputs,)  # each label its own: they are separate yes/no questions

    @staticmethod
    def target_tensor(targets: list[Any]) -> torch.Tensor:
        return torch.as_tensor(targets, dtype=torch.float32)  # a cached split's targets are a tensor already

    @staticmethod
    def negative_log_likelihood(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), truth)

    @staticmethod
    def confidences(logits: torch.Tensor, targets: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(each label's probability, whether the text carries it), over every text and label."""
        return logits.float().sigmoid().numpy().ravel(), np.asarray(targets, dtype=float).ravel()

    @staticmethod
    def calibrated_thresholds(thresholds: torch.Tensor | None, temperature: torch.Tensor) -> torch.Tensor | None:
        """The thresholds on the calibrated probabilities that choose exactly the labels the old ones chose:
        sigmoid(z) >= t  <=>  z >= logit(t)  <=>  sigmoid(z / T) >= sigmoid(logit(t) / T)."""
        return (torch.logit(thresholds.double()) / temperature.double()).sigmoid().float()

    def baseline_predictors(self, seed: int) -> dict[str, Any]:
        """No label for any text, and each label drawn with its train share (seeded)."""
        return {"all negative": DummyClassifier(strategy="constant", constant=np.zeros(self.num_outputs, dtype=int)),
                "per-label prior": DummyClassifier(strategy="stratified", random_state=seed)}

    def predictions(self, logits: torch.Tensor, thresholds: torch.Tensor | None = None
                    ) -> list[tuple[Any, dict[str, float] | None]]:
        """(the labels at or above their thresholds, every label's sigmoid probability) per example."""
        probabilities = logits.sigmoid().tolist()
        return [([name for name, chosen in zip(self.label_names, row, strict=True) if chosen],
                 dict(zip(self.label_names, scores, strict=True)))
                for row, scores in zip(self.decide(logits, thresholds).tolist(), probabilities, strict=True)]

    def mistakes(self, logits: torch.Tensor, targets: list[Any], thresholds: torch.Tensor | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(each wrong label of a text, most confident first: a false positive (chosen, not carried) with its
        probability, a false negative (carried, not chosen) with the probability it was absent; per label, its
        false positives and false negatives, the most errors first)."""
        probabilities = logits.float().sigmoid()
        chosen, truth = torch.from_numpy(self.decide(logits, thresholds)).bool(), torch.as_tensor(targets).bool()
        answers = []
        for index, label in torch.nonzero(chosen != truth).tolist():
            positive = bool(chosen[index, label])
            answers.append({"index": index, "label": self.label_names[label],
                            "error": "false positive" if positive else "false negative",
                            "probability": (probabilities[index, label] if positive
                                            else 1 - probabilities[index, label]).item()})
        answers.sort(key=lambda answer: -answer["probability"])
        false_positives, false_negatives = (chosen & ~truth).sum(dim=0), (~chosen & truth).sum(dim=0)
        per_label = [{"label": name, "false positives": int(fp), "false negatives": int(fn)}
                     for name, fp, fn in zip(self.label_names, false_positives, false_negatives, strict=True)
                     if fp + fn]
        return answers, sorted(per_label, key=lambda row: -(row["false positives"] + row["false negatives"]))

    def distribution(self, targets: list[Any]) -> dict[str, int]:
        """label -> texts carrying it."""
        counts = np.asarray(targets, dtype=int).sum(axis=0) if targets else np.zeros(self.num_outputs, dtype=int)
        return {name: int(count) for name, count in zip(self.label_names, counts, strict=True)}


@dataclass(frozen=True)
class Regression:
    label_names: list[str]  # one: the target column's name
    metric: str
    target_mean: float = 0.0  # the train split's, for standardising the target
    target_std: float = 1.0
    class_weights: None = field(default=None, init=False)

    name: ClassVar[str] = "regression"
    metric_names: ClassVar[tuple[str, ...]] = TASK_METRICS["regression"]
    LOWER_IS_BETTER: ClassVar[frozenset[str]] = frozenset({"rmse", "mae"})
    stratified: ClassVar[bool] = False
    decides_by_threshold: ClassVar[bool] = False

    @staticmethod
    def read_label(value: Any, where: str, separator: str | None = None) -> float:
        if missing(value):
            raise UserInputError(f"{where}: missing target ({value!r}); remove the row or give it a value")
        try:
            number = float(value.strip().replace(",", ".") if isinstance(value, str) else value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not math.isfinite(number):
            raise UserInputError(f"{where}: the regression target {as_json(value)} is not a number; "
                                 "fix the value, or if the column holds classes, use the default \"task\": "
                                 "\"single_label\"")
        return number

    @staticmethod
    def label_space(labels: list[float], path: str, label_column: str) -> list[str]:
        if len(set(labels)) < 2:
            raise UserInputError(f"{path}, column '{label_column}': every row has the target {labels[0]}; "
                                 "there is nothing to learn")
        return [label_column]

    @staticmethod
    def unknown_labels(label: float, label_names: list[str]) -> list[str]:
        return []  # any number is a target

    @classmethod
    def of(cls, config: Config, label_names: list[str], train_labels: list[Label] | None = None) -> "Regression":
        values = np.asarray(train_labels, dtype=np.float64)
        return cls(label_names, config.training.metric, float(values.mean()), float(values.std()))

    num_outputs = 1
    temperature_shape = None  # a number, not a probability: nothing to calibrate
    higher_is_better = SingleLabelClassification.higher_is_better
    is_better = SingleLabelClassification.is_better
    fit_decision = SingleLabelClassification.fit_decision

    def encode(self, label: float) -> float:
        return label

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Squared error of the standardised prediction against the standardised target."""
        standardised = (targets.float() - self.target_mean) / self.target_std
        return F.mse_loss(logits.float().squeeze(-1), standardised, reduction="sum")

    def decide(self, logits: torch.Tensor, thresholds: torch.Tensor | None = None) -> np.ndarray:
        """The predicted numbers, in the target's own units."""
        return (logits.squeeze(-1).double() * self.target_std + self.target_mean).numpy()

    def predictions(self, logits: torch.Tensor, thresholds: torch.Tensor | None = None
                    ) -> list[tuple[Any, dict[str, float] | None]]:
        return [(value, None) for value in self.decide(logits).tolist()]

    def metrics(self, logits: torch.Tensor, targets: list[Any], thresholds: torch.Tensor | None = None
                ) -> dict[str, Any]:
        return self.scores(self.decide(logits), targets)

    @staticmethod
    def baseline_predictors(seed: int) -> dict[str, Any]:
        """The train split's mean for every text."""
        return {"train mean": DummyRegressor(strategy="mean")}

    @staticmethod
    def scores(predicted: np.ndarray, targets: list[Any]) -> dict[str, Any]:
        """The metrics of predicted numbers, whoever made them: the model, or a baseline."""
        truth, predicted = np.asarray(targets, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        constant = np.ptp(predicted) == 0 or np.ptp(truth) == 0  # a correlation is undefined: report 0
        shown = np.unique(np.linspace(0, len(truth) - 1, min(len(truth), POINTS_KEPT)).round().astype(int))
        return {
            "rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))),
            "mae": float(mean_absolute_error(truth, predicted)),
            "pearson": 0.0 if constant else float(stats.pearsonr(truth, predicted).statistic),
            "spearman": 0.0 if constant else float(stats.spearmanr(truth, predicted).statistic),
            # for the report's predicted-vs-true and residual plots: evenly spaced examples of the split
            "points": {"true": truth[shown].tolist(), "predicted": predicted[shown].tolist()},
        }

    def mistakes(self, logits: torch.Tensor, targets: list[Any], thresholds: torch.Tensor | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(the largest errors first: index, true, predicted, error; nothing pairs up for a number)."""
        predicted = self.decide(logits)
        answers = [{"index": index, "true": float(target), "predicted": float(guess), "error": float(guess - target)}
                   for index, (target, guess) in enumerate(zip(targets, predicted, strict=True))]
        return sorted(answers, key=lambda answer: -abs(answer["error"])), []

    def distribution(self, targets: list[Any]) -> dict[str, float]:
        values = np.asarray(targets, dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max())}

    def record(self) -> dict[str, Any]:
        return {"type": self.name, "metric": self.metric, "target_mean": self.target_mean,
                "target_std": self.target_std}

    def class_weight_table(self) -> None:
        return None


Task = SingleLabelClassification | MultiLabelClassification | Regression
TASKS: dict[str, type[Task]] = {kind.name: kind for kind in (SingleLabelClassification, MultiLabelClassification,
                                                              Regression)}


def task_type(config: Config) -> type[Task]:
    """The task class the config names: what reads its labels, before the task itself (its label space) exists."""
    return TASKS[config.task]


def build_task(config: Config, label_names: list[str], train_labels: list[Label]) -> Task:
    """The task of a run about to train, from its train split's labels."""
    return task_type(config).of(config, label_names, train_labels)


def loaded_task(label_names: list[str], record: dict[str, Any] | None, metric: str) -> Task:
    """The task of a trained model, from what its checkpoint or export recorded (task.record()); None: a checkpoint
    from before tasks, which was single-label, scored by metric (its config's training.metric)."""
    record = record or {"type": SingleLabelClassification.name, "metric": metric}
    if record["type"] == Regression.name:
        return Regression(label_names, record["metric"], record["target_mean"], record["target_std"])
    return TASKS[record["type"]](label_names, record["metric"])


def split_label_cell(cell: str, where: str, separator: str | None) -> list[Any]:
    """A table cell's labels: a JSON or Python list literal, else the cell split on the separator."""
    text = cell.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)  # JSON's lists are Python lists; so are pandas' written lists
        except (ValueError, SyntaxError):
            raise UserInputError(f"{where}: {text[:60]!r} looks like a list but does not parse; write it as "
                                 '["a", "b"] or set data.label_separator') from None
        if isinstance(parsed, list):
            return parsed
    if separator is None:
        return [text] if not missing(text) else []
    return [part.strip() for part in text.split(separator)]


def mapped_weights(setting: dict[str, float], label_names: list[str]) -> list[float]:
    unknown = sorted(set(setting) - set(label_names))
    if unknown:
        raise UserInputError(f"training.class_weights: {unknown} {'is not a label' if len(unknown) == 1 else 'are not labels'}"
                             f" of the train split; its labels are {label_names}")
    return [float(setting.get(name, 1.0)) for name in label_names]


def imbalance_warning(train_counts: dict[str, float], config: Config) -> str | None:
    """A warning when the train split's classes are strongly imbalanced and nothing in the config accounts for it."""
    if config.task == Regression.name:
        return None
    frequent = max(train_counts, key=train_counts.get)
    rare = min(train_counts, key=train_counts.get)
    ratio = train_counts[frequent] / max(train_counts[rare], 1)
    if ratio < IMBALANCE_RATIO:
        return None
    advice = []
    if config.training.class_weights is None:
        advice.append('training.class_weights "balanced" weighs each class inversely to its frequency')
    if config.training.metric in ("accuracy", "micro_f1", "subset_accuracy"):
        advice.append(f'training.metric "macro_f1" scores every class equally ({config.training.metric} mostly '
                      'measures the frequent ones)')
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
