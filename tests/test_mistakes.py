"""The most confident mistakes, per task, kept by the run and read back by `finetune errors`, the API and the report."""

import json
from pathlib import Path

import pytest
import torch

import finetune_pipeline as ft
from finetune_pipeline import cli
from finetune_pipeline.core.task import MultiLabelClassification, Regression, SingleLabelClassification
from finetune_pipeline.errors import EXIT_BAD_INPUT
from finetune_pipeline.runs import artifacts
from tests.test_calibration import calibrated_run  # noqa: F401 (a fixture: a run that learned the toy task)


def test_each_task_lists_its_mistakes_most_confident_first():
    single = SingleLabelClassification(["a", "b", "c"], "accuracy")
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0]])
    answers, pairs = single.mistakes(logits, [1, 1, 0, 2])  # the first, third and fourth are wrong
    assert [(answer["index"], answer["true"], answer["predicted"]) for answer in answers] == [
        (0, "b", "a"), (3, "c", "a"), (2, "a", "c")]
    assert answers[0]["probability"] > answers[1]["probability"] > answers[2]["probability"]
    assert pairs[0] == {"true": "b", "predicted": "a", "count": 1} and len(pairs) == 3

    multi = MultiLabelClassification(["x", "y"], "macro_f1")
    answers, per_label = multi.mistakes(torch.tensor([[4.0, -4.0], [-1.0, 1.0]]), [[0.0, 0.0], [1.0, 1.0]],
                                        torch.tensor([0.5, 0.5]))
    assert [(answer["index"], answer["label"], answer["error"]) for answer in answers] == [
        (0, "x", "false positive"), (1, "x", "false negative")]
    assert per_label == [{"label": "x", "false positives": 1, "false negatives": 1}]

    regression = Regression(["score"], "rmse", 0.0, 1.0)
    answers, _ = regression.mistakes(torch.tensor([[1.0], [5.0], [2.0]]), [1.0, 2.0, 2.5])
    assert [answer["index"] for answer in answers] == [1, 2, 0] and answers[0]["error"] == 3.0


def test_a_run_keeps_its_mistakes_and_every_reader_shows_them(calibrated_run, capsys):  # noqa: F811
    metrics = json.loads((calibrated_run / artifacts.METRICS_FILE).read_text())
    test = metrics["mistakes"]["test"]
    wrong = 16 - round(metrics["test_score"] * 16)
    assert test["wrong"] == wrong == len(test["examples"])
    probabilities = [mistake["probability"] for mistake in test["examples"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(pair["count"] for pair in test["confusions"]) == wrong
    if not wrong:
        pytest.skip("the toy run made no mistake on test")
    first = test["examples"][0]
    test_file = Path(json.loads((calibrated_run / artifacts.CONFIG_FILE).read_text())["data"]["test_file"])
    assert test_file.read_text().splitlines()[first["line"] - 1].startswith(first["text"])

    assert cli.main(["errors", str(calibrated_run), "--n", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"test: {wrong} wrong answers; the 1 the model was surest of:" in printed and first["text"] in printed
    table = ft.load_run(calibrated_run).errors(n=1)
    assert table.to_dict("records") == [first]
    assert "<h2>Most confident mistakes</h2>" in (calibrated_run / artifacts.REPORT_FILE).read_text(encoding="utf-8")

    assert cli.main(["errors", str(calibrated_run), "--n", "51"]) == EXIT_BAD_INPUT
    assert "a run keeps the 50 most confident of each split" in capsys.readouterr().err
