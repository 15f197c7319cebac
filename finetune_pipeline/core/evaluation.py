"""Evaluation: run the model over a split without gradients, then let the task decide and score."""

from typing import Any

import torch

from finetune_pipeline.core.batching import InputSplit, evaluation_batches
from finetune_pipeline.core.device import Placement, autocast
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Task
from finetune_pipeline.runtime.distributed import gather_rows, my_share


@torch.inference_mode()
def predict_logits(
    model: TextClassifier,
    split: InputSplit,
    batch_size: int,
    placement: Placement,
) -> torch.Tensor:
    """Logits (examples, num_labels) as float32 on the CPU, in the split's original order."""
    was_training = model.training
    model.eval()
    logits = torch.empty(len(split), model.head.out_proj.out_features)
    # under torchrun: this process's share
    batches = my_share(evaluation_batches(split.lengths, batch_size), placement.processes)
    for indices in batches:
        batch = split.batch(indices).to(placement.device)
        with autocast(placement.device, placement.precision):
            batch_logits = batch.logits(model)  # (batch, num_labels)
        logits[indices] = batch_logits.float().cpu()  # float32 holds fp16 and bf16 values exactly
    model.train(was_training)
    return gather_rows(logits, batches)  # every example exactly once


def evaluate(
    model: TextClassifier,
    split: InputSplit,
    task: Task,
    batch_size: int,
    placement: Placement,
    fit_decision: bool = False,
) -> dict[str, Any]:
    """The task's metrics on a split, from its decisions on the model's logits. fit_decision (the val split, after each
    epoch): first choose what the decision rule learns from data (multi-label thresholds) on this split."""
    logits = predict_logits(model, split, batch_size, placement)
    if fit_decision and (fitted := task.fit_decision(logits, split.labels)) is not None:
        model.head.thresholds.copy_(fitted)  # kept with the weights: each checkpoint holds its own
    return task.metrics(logits, split.labels, model.head.decision_thresholds)
