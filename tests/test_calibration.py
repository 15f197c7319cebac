"""Calibration: a temperature fitted on val, applied alike by the run's test, evaluate, predict and both exports,
changing no decision; ECE and NLL before and after; regression left alone."""

import json
from pathlib import Path

import pytest
import torch

from finetune_pipeline.core.batching import tokenize_split
from finetune_pipeline.core.calibration import fit_temperature, reliability
from finetune_pipeline.core.data import Example
from finetune_pipeline.core.task import MultiLabelClassification, SingleLabelClassification
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import files
from finetune_pipeline.serving.export import export_run
from finetune_pipeline.serving.inference import evaluate_file, predict_texts


def test_an_over_confident_model_gets_a_temperature_above_one_and_a_lower_nll():
    torch.manual_seed(0)
    truth = torch.randint(0, 3, (400,))
    # right 70% of the time, but with logits that say 99%: over-confident
    predicted = torch.where(torch.rand(400) < 0.7, truth, (truth + 1) % 3)
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 6.0
    task = SingleLabelClassification(["a", "b", "c"], "accuracy")
    temperature = fit_temperature(task, logits, truth.tolist())
    assert temperature.shape == (1,) and temperature.item() > 1
    before, after = reliability(task, logits, truth.tolist()), reliability(task, logits / temperature, truth.tolist())
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    assert after["ece"] < 0.05  # one confidence level, 0.7 right: temperature scaling can fit it exactly
    assert torch.equal((logits / temperature).argmax(dim=-1), logits.argmax(dim=-1))


def test_multi_label_gets_a_temperature_per_label_and_thresholds_that_decide_alike():
    task = MultiLabelClassification(["x", "y"], "macro_f1")
    torch.manual_seed(1)
    logits = torch.randn(300, 2) * torch.tensor([5.0, 0.5])  # x over-confident, y under-confident
    targets = (torch.rand(300, 2) < torch.sigmoid(logits / torch.tensor([5.0, 0.5]))).float().tolist()
    temperature = fit_temperature(task, logits, targets)
    assert temperature.shape == (2,) and temperature[0] > 1 > temperature[1]
    thresholds = torch.tensor([0.3, 0.65])
    mapped = task.calibrated_thresholds(thresholds, temperature)
    assert (task.decide(logits, thresholds) == task.decide(logits / temperature, mapped)).all()


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> Path:
    from finetune_pipeline.core.config import config_from_dict
    from tests.conftest import toy_rows, write_csv

    folder = tmp_path_factory.mktemp("calibrated-run")
    return run_training(config_from_dict({
        "seed": 7,
        "data": {"train_file": str(write_csv(folder / "train.csv", toy_rows(48, seed=1))),
                 "val_file": str(write_csv(folder / "val.csv", toy_rows(16, seed=2))),
                 "test_file": str(write_csv(folder / "test.csv", toy_rows(16, seed=3))), "max_length": 32},
        "model": {"backbone": str(tiny_backbone_dir), "hidden_dim": 16, "dropout": 0.0},
        "training": {"epochs": 6, "batch_size": 4, "learning_rate": 0.05, "encoder_learning_rate": 0.005,
                     "warmup_ratio": 0.0, "freeze_backbone": False, "mixed_precision": "no", "device": "cpu"},
        "output": {"artifacts_root": str(folder / "artifacts"), "cache_dir": str(folder / "cache")},
    }))


def test_a_run_records_its_calibration_and_every_way_of_using_the_model_applies_it(calibrated_run, tmp_path):
    metrics = json.loads((calibrated_run / artifacts.METRICS_FILE).read_text())
    calibration = metrics["calibration"]
    [temperature] = calibration["temperature"]
    assert temperature != 1.0 and calibration["fitted_on"] == "val"
    assert calibration["val"]["after"]["nll"] <= calibration["val"]["before"]["nll"]  # fitted there to minimise it
    assert {"ece", "nll", "bins"} <= set(calibration["test"]["before"])
    saved = files.load_checkpoint(calibrated_run / artifacts.BEST_MODEL_FILE)
    assert saved["model_state"]["head.temperature"].tolist() == [temperature]

    # decisions unchanged: the best epoch's val score again, and the run's own test metrics
    data = json.loads((calibrated_run / artifacts.CONFIG_FILE).read_text())["data"]
    assert evaluate_file(calibrated_run, Path(data["val_file"]))[0]["accuracy"] == metrics["best_val_score"]
    evaluated, _ = evaluate_file(calibrated_run, Path(data["test_file"]))
    assert {key: evaluated[key] for key in metrics["test_metrics"]} == metrics["test_metrics"]

    # predict's probabilities are softmax(raw logits / T); both exports give the same ones
    texts = ["good film", "bad plot", "a film"]
    through_run = [prediction.probabilities for prediction in predict_texts(calibrated_run, texts)]
    run = artifacts.load_run(calibrated_run)
    run.model.head.temperature.fill_(1.0)  # the model as trained, uncalibrated
    batch = tokenize_split([Example(text, "pos", 1) for text in texts], lambda label: 0, run.tokenizer,
                           32).batch([0, 1, 2])
    with torch.no_grad():
        raw = run.model(batch.input_ids, batch.attention_mask)
    expected = (raw / temperature).softmax(-1)
    assert torch.allclose(torch.tensor([list(row.values()) for row in through_run]), expected, atol=1e-6)
    assert not torch.allclose(raw.softmax(-1), expected, atol=1e-3)  # calibration changed the probabilities
    exported = export_run(calibrated_run, "all", output=tmp_path / "export")
    assert json.loads((exported["hf"] / "config.json").read_text())["logit_temperature"] == [temperature]
    for folder, runtime in ((exported["hf"], "torch"), (exported["onnx"], "onnx")):
        through_export = [prediction.probabilities for prediction in predict_texts(folder, texts, runtime=runtime)]
        for ours, theirs in zip(through_run, through_export, strict=True):
            assert list(theirs.values()) == pytest.approx(list(ours.values()), abs=1e-5)


def test_a_regression_run_is_not_calibrated_and_says_why(make_config, tmp_path):
    from tests.conftest import write_csv

    rows = [(f"text {index}", str(index % 5 + 0.5)) for index in range(40)]
    data = {name: str(write_csv(tmp_path / f"{name}.csv", rows[start:start + size]))
            for name, start, size in (("train_file", 0, 24), ("val_file", 24, 8), ("test_file", 32, 8))}
    run_dir = run_training(make_config(task="regression", data=data, training={"metric": "rmse", "epochs": 1}))
    assert "calibration" not in json.loads((run_dir / artifacts.METRICS_FILE).read_text()) or json.loads(
        (run_dir / artifacts.METRICS_FILE).read_text())["calibration"] is None
    page = (run_dir / artifacts.REPORT_FILE).read_text(encoding="utf-8")
    assert "not calibrated: a regression outputs a number, not a probability" in page
