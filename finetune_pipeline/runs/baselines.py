"""What a score must beat: the baselines of each split, and the flags of a run that does not beat them.

A student who trains an English backbone on Russian tweets gets 0.40 accuracy and may call it a result; answering
"neutral" to every tweet scores 0.40 too. So every run measures, before training, what answering without reading
the text scores on its val and test splits (scikit-learn's dummy estimators fit on the train targets, see
Task.baseline_predictors):

    single_label   the most frequent train class for every text; a guess drawn with the train class shares
    multi_label    no label for any text; each label drawn with its train share
                   (a guess: the mean of GUESS_DRAWS seeded draws)
    regression     the train mean for every text

and, once trained, flags the run where its score is within the split's resolution of the best baseline (a few
examples, core/resolution.py; for a continuous metric: see CONTINUOUS_MARGIN), or where it answers one class for
(nearly) every text, with the likely cause where the run knows one. The flags are recorded in metrics.json and
shown wherever the score is: the console, compare, report.html, the notebook's run display and the model card.
"""

import math
from typing import Any

import numpy as np

from finetune_pipeline.core.batching import TokenizedSplit
from finetune_pipeline.core.calibration import describe_temperature
from finetune_pipeline.core.config import CONTINUOUS_METRICS, LOWER_IS_BETTER
from finetune_pipeline.core.resolution import RESOLUTION_EXAMPLES
from finetune_pipeline.core.task import IMBALANCE_RATIO, Task
from finetune_pipeline.runs.run_metrics import RunMetrics

SCORED_SPLITS = ("val", "test")
GUESS_DRAWS = 10  # a stratified guess scores the mean of this many seeded draws
ONE_CLASS_SHARE = 0.95  # a model answering one class for this share of a split's texts answers one class
# A continuous metric has no step per example: a run is flagged when its error is not this much below the baseline's,
# or its correlation not this far above the baseline's zero.
CONTINUOUS_MARGIN = 0.05
CORRELATION_FLOOR = 0.1


def baseline_scores(task: Task, tokenized: dict[str, TokenizedSplit], seed: int) -> dict[str, dict[str, Any]]:
    """split -> baseline name -> the task's metrics (its headline ones) on val and test."""
    train_targets = np.asarray(tokenized["train"].labels)
    result = {}
    for split in SCORED_SPLITS:
        targets = tokenized[split].labels
        result[split] = {}
        for name, predictor in task.baseline_predictors(seed).items():
            predictor.fit(np.zeros((len(train_targets), 1)), train_targets)
            # a guess is drawn: its mean over draws, not one lucky (or unlucky) draw on a small split
            guess = predictor.get_params().get("strategy") == "stratified"
            scores = []
            for draw in range(GUESS_DRAWS if guess else 1):
                if guess:
                    predictor.set_params(random_state=seed + draw)
                scores.append(task.scores(predictor.predict(np.zeros((len(targets), 1))), targets))
            result[split][name] = {metric: float(np.mean([score[metric] for score in scores]))
                                   for metric in task.metric_names}
    return result


def best_baseline(baselines: dict[str, dict[str, float]], metric: str) -> tuple[str, float]:
    """(name, score) of the baseline that scores best on metric."""
    pick = min if metric in LOWER_IS_BETTER else max
    name = pick(baselines, key=lambda key: baselines[key][metric])
    return name, baselines[name][metric]


def score_flags(metrics: RunMetrics) -> list[str]:
    """The run's flags: a val or test score no better than its best baseline, one class for (nearly) every text;
    each with the likely causes the run recorded. Empty for a run without baselines (an older run)."""
    flags = []
    for split in SCORED_SPLITS:
        scores = metrics.val_metrics if split == "val" else metrics.test_metrics
        baselines = (metrics.baselines or {}).get(split)
        if not scores or not baselines or metrics.metric not in scores:
            continue
        flags += [flag for flag in (near_baseline(split, scores, baselines, metrics), one_class(split, scores, metrics))
                  if flag]
    causes = likely_causes(metrics) if flags else []
    return [f"{flag}{'; likely cause: ' + '; '.join(causes) if causes else ''}" for flag in flags]


def near_baseline(split: str, scores: dict[str, Any], baselines: dict[str, dict[str, float]],
                  metrics: RunMetrics) -> str | None:
    metric, size = metrics.metric, (metrics.split_sizes or {}).get(split, 0)
    name, baseline = best_baseline(baselines, metric)
    score = scores[metric]
    if metric in CONTINUOUS_METRICS:
        margin = (baseline * CONTINUOUS_MARGIN if metric in LOWER_IS_BETTER else CORRELATION_FLOOR)
        close = baseline - score < margin if metric in LOWER_IS_BETTER else score - baseline < margin
        within = f"within {CONTINUOUS_MARGIN:.0%} of" if metric in LOWER_IS_BETTER else "hardly better than"
    else:
        close = size > 0 and (score - baseline) * size < RESOLUTION_EXAMPLES - 1e-9
        within = f"within {RESOLUTION_EXAMPLES} examples of" if score >= baseline else "below"
    if not close:
        return None
    return (f"{split} {metric} {score:.4f} is {within} the baseline '{name}' ({baseline:.4f}): the model learned "
            "little beyond what answering without reading the text scores")


def one_class(split: str, scores: dict[str, Any], metrics: RunMetrics) -> str | None:
    """A single-label model that answers one class for (nearly) every text of the split, when the split's truth
    is not (nearly) all that class."""
    matrix = np.asarray(scores.get("confusion_matrix") or [[0]])
    if matrix.sum() == 0 or matrix.shape[0] < 2:
        return None
    predicted, truth = matrix.sum(axis=0) / matrix.sum(), matrix.sum(axis=1) / matrix.sum()
    top = int(predicted.argmax())
    if predicted[top] < ONE_CLASS_SHARE or truth[top] >= ONE_CLASS_SHARE:
        return None
    name = (metrics.label_names or [str(top)])[top]
    return (f"{split}: the model answers '{name}' for {predicted[top]:.0%} of the texts ({truth[top]:.0%} of them "
            f"are '{name}')")


def likely_causes(metrics: RunMetrics) -> list[str]:
    """What the run itself recorded that explains a flag."""
    causes = []
    if metrics.language_warning:
        causes.append(metrics.language_warning)
    losses = [entry.get("train_loss") for entry in metrics.history if entry.get("train_loss") is not None]
    if losses and (not all(math.isfinite(loss) for loss in losses) or (len(losses) > 1 and losses[-1] >= losses[0])):
        causes.append(f"the training loss did not fall ({' -> '.join(f'{loss:.4g}' for loss in losses)} per epoch): "
                      "training.learning_rate (or encoder_learning_rate) may be too high")
    train_counts = (metrics.label_distribution or {}).get("train") or {}
    counts = {name: count for name, count in train_counts.items() if isinstance(count, int)}
    if metrics.task_type != "regression" and counts and min(counts.values()) * IMBALANCE_RATIO <= max(counts.values()):
        rarest = min(counts, key=counts.get)
        causes.append(f"the classes are imbalanced (train: '{rarest}' {counts[rarest]} examples, "
                      f"'{max(counts, key=counts.get)}' {max(counts.values())}); see training.class_weights")
    return causes


def describe_baselines(baselines: dict[str, dict[str, dict[str, float]]] | None, metric: str | None) -> str | None:
    """'val: most frequent class 0.5000, stratified guess 0.4986; test: ...' by metric; None without baselines."""
    if not baselines or metric is None:
        return None
    return "; ".join(f"{split}: {describe_split_baselines(by_name, metric)}" for split, by_name in baselines.items())


def describe_split_baselines(by_name: dict[str, dict[str, float]], metric: str) -> str:
    """'most frequent class 0.5000, stratified guess 0.4986'."""
    return ", ".join(f"{name} {scores[metric]:.4f}" for name, scores in by_name.items() if metric in scores)


def summary_lines(metrics: RunMetrics) -> list[str]:
    """The run's scores next to its baselines, and its calibration: what the console says when a run ends (its flags
    were logged as warnings just before)."""
    metric = metrics.metric_name
    lines = [f"best val {metric} {metrics.best_val_score:.4f} (epoch {metrics.best_epoch}), test {metric} "
             f"{metrics.test_score:.4f}" if metrics.test_score is not None and metrics.best_val_score is not None
             else f"status: {metrics.status}"]
    if (described := describe_baselines(metrics.baselines, metrics.metric)) is not None:
        lines.append(f"baselines ({metric} without reading the text): {described}")
    if metrics.calibration is not None:
        test = metrics.calibration["test"]
        lines.append(f"calibrated on val: temperature {describe_temperature(metrics.calibration['temperature'])}; "
                     f"test ECE {test['before']['ece']:.4f} -> {test['after']['ece']:.4f}, "
                     f"NLL {test['before']['nll']:.4f} -> {test['after']['nll']:.4f}")
    return lines
