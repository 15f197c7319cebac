"""training.class_weights: each class's examples weighted in the loss, from the train split alone; recorded, shown
by the dry run with the label distribution, and one factor for compare."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from finetune_pipeline.core.config import config_settings
from finetune_pipeline.core.task import SingleLabelClassification
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.preparation import dry_run
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import run_log
from tests.conftest import toy_rows, write_csv


def imbalanced_train(tmp_path: Path, positives: int = 40, negatives: int = 4) -> str:
    rows = toy_rows(2 * max(positives, negatives), seed=11)
    chosen = [row for row in rows if row[1] == "pos"][:positives] + [row for row in rows if row[1] == "neg"][:negatives]
    return str(write_csv(tmp_path / "imbalanced.csv", chosen))


def step_losses(run_dir: Path) -> list[float]:
    return [float(event["loss"]) for event in run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")]


def test_balanced_weights_come_from_the_train_split_and_average_one(make_config):
    labels = ["neg"] * 30 + ["pos"] * 10
    weights = SingleLabelClassification.of(make_config(training={"class_weights": "balanced"}), ["neg", "pos"],
                                           labels).class_weights
    assert weights == pytest.approx([40 / (2 * 30), 40 / (2 * 10)])
    assert sum(weights[label == "pos"] for label in labels) / len(labels) == pytest.approx(1.0)


def test_a_mapping_weighs_the_labels_it_names_and_one_for_the_rest(make_config):
    task = SingleLabelClassification.of(make_config(training={"class_weights": {"pos": 3.0}}),
                                        ["neg", "neutral", "pos"], ["neg", "neutral", "pos"])
    assert task.class_weights == [1.0, 1.0, 3.0]


def test_the_weighted_loss_is_each_examples_loss_times_its_class_weight():
    task = SingleLabelClassification(["neg", "pos"], "accuracy", class_weights=[0.5, 4.0])
    logits, labels = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-1.0, 1.5]]), torch.tensor([0, 1, 1])
    per_example = F.cross_entropy(logits, labels, reduction="none")
    assert task.loss_sum(logits, labels).item() == pytest.approx((per_example * torch.tensor([0.5, 4.0, 4.0])).sum().item())
    unweighted = SingleLabelClassification(["neg", "pos"], "accuracy")
    assert unweighted.loss_sum(logits, labels).item() == pytest.approx(per_example.sum().item())


def test_weights_of_one_change_nothing_and_balanced_weights_change_the_loss(make_config, tmp_path):
    train_file = imbalanced_train(tmp_path)

    def run(class_weights):
        return run_training(make_config(data={"train_file": train_file},
                                        training={"epochs": 1, "log_every_steps": 1, "class_weights": class_weights}))

    plain, ones, balanced = run(None), run({"pos": 1, "neg": 1}), run("balanced")
    assert step_losses(ones) == step_losses(plain)  # the weighted path, weights 1: the very same losses
    assert step_losses(balanced) != step_losses(plain)
    metrics = json.loads((balanced / artifacts.METRICS_FILE).read_text())
    assert metrics["class_weights"] == pytest.approx({"neg": 44 / (2 * 4), "pos": 44 / (2 * 40)})
    assert metrics["label_distribution"]["train"] == {"neg": 4, "pos": 40}
    assert json.loads((plain / artifacts.METRICS_FILE).read_text())["class_weights"] is None
    logged = run_log.read_events(balanced / artifacts.TRAIN_LOG_FILE, "class_weights")
    assert float(logged[0]["neg"]) == pytest.approx(5.5)
    assert "weight in the loss" in (balanced / artifacts.REPORT_FILE).read_text()


def test_the_dry_run_shows_the_label_distribution_and_warns_of_imbalance(make_config, tmp_path):
    train_file = imbalanced_train(tmp_path)
    plan = dry_run(make_config(data={"train_file": train_file}))
    assert plan["label_distribution"]["train"] == {"neg": 4, "pos": 40}
    assert plan["label_distribution"]["val"] == {"neg": 8, "pos": 8}
    assert "10x" in plan["imbalance_warning"] and "training.class_weights" in plan["imbalance_warning"]
    assert "macro_f1" in plan["imbalance_warning"]
    answered = dry_run(make_config(data={"train_file": train_file},
                                   training={"class_weights": "balanced", "metric": "macro_f1"}))
    assert answered["imbalance_warning"] is None
    assert answered["class_weights"] == pytest.approx({"neg": 5.5, "pos": 0.55})
    assert dry_run(make_config())["imbalance_warning"] is None  # the balanced toy data


def test_class_weights_are_one_setting_for_compare_and_sweeps(make_config):
    settings = config_settings(make_config(training={"class_weights": {"pos": 2.0}}).to_plain())
    assert settings["training.class_weights"] == {"pos": 2.0}
    assert not any(key.startswith("training.class_weights.") for key in settings)
