"""Calibration: probabilities that mean what they say, by temperature scaling (Guo et al., 2017).

A fine-tuned classifier is over-confident: of the texts it labels with probability 0.97, far fewer than 97% are
right. Dividing the logits by one number T > 1 (fitted on the val split, to minimise its negative log-likelihood)
softens every probability alike and leaves the decision as it was:

    single_label   one T for all classes: softmax(z / T); the argmax of z / T is the argmax of z
    multi_label    one T per label: sigmoid(z / T); each threshold t becomes sigmoid(logit(t) / T), so every
                   label is chosen exactly where it was
    regression     nothing: the model outputs a number, not a probability

After training, the best checkpoint's head gets its temperature (ClassifierHead.temperature, a buffer saved with
the weights and applied in its forward): test, evaluate, predict and both exports give calibrated probabilities.
The expected calibration error (ECE: the gap between confidence and accuracy, averaged over RELIABILITY_BINS bins
of confidence, weighted by how many predictions fall in each) and the negative log-likelihood on test are recorded
before and after.
"""

from typing import Any

import numpy as np
import torch

from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Task

RELIABILITY_BINS = 15  # equal-width bins of confidence, as in Guo et al.
LBFGS_STEPS = 50


def fit_temperature(task: Task, logits: torch.Tensor, targets: list[Any]) -> torch.Tensor:
    """The temperature (one, or one per label) that minimises the task's negative log-likelihood of logits / T."""
    logits = logits.clone()  # predict_logits' come from inference mode, which autograd cannot use
    log_temperature = torch.zeros(task.temperature_shape, requires_grad=True)  # T = exp(.) stays positive
    optimizer = torch.optim.LBFGS([log_temperature], max_iter=LBFGS_STEPS, line_search_fn="strong_wolfe")
    truth = task.target_tensor(targets)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = task.negative_log_likelihood(logits / log_temperature.exp(), truth)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_temperature.detach().exp()


def reliability(task: Task, logits: torch.Tensor, targets: list[Any]) -> dict[str, Any]:
    """ECE, NLL and the reliability diagram's bins (mean confidence, accuracy and count per non-empty bin)."""
    confidences, outcomes = task.confidences(logits, targets)
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, RELIABILITY_BINS - 1)
    bins, gap = [], 0.0
    for index in range(RELIABILITY_BINS):
        inside = which == index
        if inside.any():
            confidence, accuracy = float(confidences[inside].mean()), float(outcomes[inside].mean())
            bins.append({"confidence": confidence, "accuracy": accuracy, "count": int(inside.sum())})
            gap += inside.sum() * abs(accuracy - confidence)
    return {"ece": float(gap / len(confidences)),
            "nll": float(task.negative_log_likelihood(logits, task.target_tensor(targets))), "bins": bins}


def calibration_record(task: Task, temperature: torch.Tensor, val: tuple[torch.Tensor, list[Any]],
                       test: tuple[torch.Tensor, list[Any]]) -> dict[str, Any]:
    """What metrics.json keeps: the temperature, and each split's reliability before and after (uncalibrated
    logits in)."""
    return {
        "temperature": temperature.tolist(),
        "fitted_on": "val",
        **{split: {"before": reliability(task, logits, targets), "after": reliability(task, logits / temperature,
                                                                                      targets)}
           for split, (logits, targets) in (("val", val), ("test", test))},
    }


def calibrate(model: TextClassifier, task: Task, val: tuple[torch.Tensor, list[Any]],
              test: tuple[torch.Tensor, list[Any]]) -> dict[str, Any] | None:
    """Fit the trained model's temperature on val and set it in its head (a multi-label head's thresholds mapped
    so that it decides as before); the record for metrics.json, or None for a task without probabilities.
    val, test: (the model's logits before calibration, the targets)."""
    if task.temperature_shape is None:
        return None
    temperature = fit_temperature(task, *val)
    head = model.head
    if head.decision_thresholds is not None:
        head.thresholds.copy_(task.calibrated_thresholds(head.thresholds.cpu(), temperature))
    head.temperature.copy_(temperature)
    return calibration_record(task, temperature, val, test)


def describe_temperature(values: list[float]) -> str:
    """'1.23', or 'per label, 0.81 to 1.62'."""
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"per label, {min(values):.3g} to {max(values):.3g}"
