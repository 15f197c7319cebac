"""Evaluation: run the model over a split without gradients, then score the predictions."""

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from finetune_pipeline.core.batching import InputSplit, evaluation_batches
from finetune_pipeline.core.device import Precision, autocast
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.runtime.distributed import gather_rows, my_share, world


@torch.inference_mode()
def predict_logits(
    model: TextClassifier,
    split: InputSplit,
    batch_size: int,
    device: torch.device,
    precision: Precision,
) -> torch.Tensor:
    """Logits (examples, num_labels) as float32 on the CPU, in the split's original order."""
    was_training = model.training
    model.eval()
    logits = torch.empty(len(split), model.head.out_proj.out_features)
    batches = my_share(evaluation_batches(split.lengths, batch_size), world())  # under torchrun: this process's
    for indices in batches:
        batch = split.batch(indices).to(device)
        with autocast(device, precision):
            batch_logits = batch.logits(model)  # (batch, num_labels)
        logits[indices] = batch_logits.float().cpu()  # float32 holds fp16 and bf16 values exactly
    model.train(was_training)
    return gather_rows(logits, batches)  # every example exactly once


def predict(
    model: TextClassifier,
    split: InputSplit,
    batch_size: int,
    device: torch.device,
    precision: Precision,
) -> np.ndarray:
    """Predicted label ids, in the split's original order."""
    return predict_logits(model, split, batch_size, device, precision).argmax(dim=-1).numpy()


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


def evaluate(
    model: TextClassifier,
    split: InputSplit,
    label_names: list[str],
    batch_size: int,
    device: torch.device,
    precision: Precision,
) -> dict[str, Any]:
    predictions = predict(model, split, batch_size, device, precision)
    return classification_metrics(list(map(int, split.labels)), predictions, label_names)
