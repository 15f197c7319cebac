"""Baselines: what answering without reading the text scores, per task, and the flags of a run that does no better,
wherever its score is shown (metrics.json, the console, compare, report.html, the notebook display, the model card)."""

import json
from pathlib import Path

import pytest

import finetune_pipeline as ft
from finetune_pipeline import cli
from finetune_pipeline.core.batching import TokenizedSplit
from finetune_pipeline.core.config import config_from_dict
from finetune_pipeline.core.task import MultiLabelClassification, Regression, SingleLabelClassification
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.baselines import baseline_scores
from finetune_pipeline.runs.run import run_training
from tests.conftest import write_csv


def split_of(labels: list) -> TokenizedSplit:
    return TokenizedSplit(input_ids=[[1]] * len(labels), labels=labels, pad_token_id=0,
                          untruncated_lengths=[1] * len(labels))


def test_each_tasks_baselines_are_what_their_names_say():
    single = SingleLabelClassification(["a", "b", "c"], "accuracy")
    train, val = split_of([0] * 6 + [1] * 3 + [2]), split_of([0, 1, 1, 2, 2])  # train's most frequent: a
    scores = baseline_scores(single, {"train": train, "val": val, "test": val}, seed=1)
    assert scores["val"]["most frequent class"]["accuracy"] == pytest.approx(1 / 5)
    assert set(scores["val"]) == {"most frequent class", "stratified guess"}
    assert scores["val"] == baseline_scores(single, {"train": train, "val": val, "test": val}, seed=1)["val"]

    multi = MultiLabelClassification(["x", "y"], "macro_f1")
    targets = split_of([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    scores = baseline_scores(multi, {"train": targets, "val": targets, "test": targets}, seed=1)
    assert scores["val"]["all negative"] == {"macro_f1": 0.0, "micro_f1": 0.0, "subset_accuracy": 0.5}
    assert set(scores["val"]) == {"all negative", "per-label prior"}

    regression = Regression(["score"], "spearman", 2.0, 1.0)
    train, test = split_of([1.0, 2.0, 3.0]), split_of([0.0, 4.0])  # the train mean, 2, is 2 away from both
    scores = baseline_scores(regression, {"train": train, "val": test, "test": test}, seed=1)
    assert scores["test"]["train mean"]["rmse"] == pytest.approx(2.0)
    assert scores["test"]["train mean"]["spearman"] == 0.0


def test_a_run_that_learned_is_not_flagged_and_records_its_baselines(make_config):
    run_dir = run_training(make_config(training={"freeze_backbone": False, "epochs": 8, "learning_rate": 0.05,
                                                 "encoder_learning_rate": 0.005, "warmup_ratio": 0.0}))
    metrics = json.loads((run_dir / artifacts.METRICS_FILE).read_text())
    assert metrics["test_score"] > metrics["baselines"]["test"]["most frequent class"]["accuracy"] + 3 / 16
    assert metrics["score_flags"] == []


@pytest.fixture(scope="module")
def blind_run(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> Path:
    """A run that cannot learn: every text is the same Cyrillic phrase (unknown tokens to the tiny English
    tokenizer), so it answers one class for every text."""
    folder = tmp_path_factory.mktemp("blind-run")
    same_text = "очень хороший фильм"

    def rows(positives: int, negatives: int) -> list[tuple[str, str]]:
        return [(same_text, "pos")] * positives + [(same_text, "neg")] * negatives

    config = config_from_dict({
        "seed": 7,
        "data": {"train_file": str(write_csv(folder / "train.csv", rows(30, 18))),
                 "val_file": str(write_csv(folder / "val.csv", rows(10, 6))),
                 "test_file": str(write_csv(folder / "test.csv", rows(10, 6))), "max_length": 32},
        "model": {"backbone": str(tiny_backbone_dir), "hidden_dim": 16},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "mixed_precision": "no", "device": "cpu"},
        "output": {"artifacts_root": str(folder / "artifacts"), "cache_dir": str(folder / "cache")},
    })
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config.to_plain()))
    return config_path


def test_a_run_that_answers_one_class_is_flagged_everywhere_its_score_is_shown(blind_run, capsys):
    assert cli.main(["train", "--config", str(blind_run)]) == 0
    console = capsys.readouterr()
    run_dir = Path(console.out.strip().splitlines()[-1].removeprefix("run folder: "))
    metrics = json.loads((run_dir / artifacts.METRICS_FILE).read_text())
    assert metrics["baselines"]["test"]["most frequent class"]["accuracy"] == pytest.approx(10 / 16)
    flags = metrics["score_flags"]
    assert any(flag.startswith("test accuracy 0.6250 is within 3 examples of the baseline 'most frequent class' "
                               "(0.6250)") for flag in flags)
    assert any(flag.startswith("test: the model answers 'pos' for 100% of the texts (62% of them are 'pos')")
               for flag in flags)
    assert all("likely cause: " in flag and "script" in flag for flag in flags)  # the language warning
    # the console: each flag a plain WARNING line, then the scores next to their baselines
    for flag in flags:
        assert f"WARNING: {flag}" in console.err
    assert "baselines (accuracy without reading the text): val: most frequent class 0.6250" in console.out

    assert [warning for warning in ft.compare([run_dir]).warnings if "within 3 examples of the baseline" in warning]
    assert any(note.startswith(f"baselines of the reference {run_dir.name}") for note in ft.compare([run_dir]).notes)
    page = (run_dir / artifacts.REPORT_FILE).read_text(encoding="utf-8")
    assert 'class="warnings"' in page and "answers &#x27;pos&#x27; for 100%" in page
    assert "test baselines (without reading the text)" in page
    assert 'class="warnings"' in ft.load_run(run_dir)._repr_html_()

    card = (ft.load_run(run_dir).export("hf")["hf"] / "README.md").read_text(encoding="utf-8")
    assert "| test, baseline: most frequent class | 0.6250 |" in card
    assert "**Warning:** test accuracy 0.6250 is within 3 examples" in card
    assert "language:" not in card.split("---")[1]  # not the backbone's: the run found the texts in another script
    assert "the training texts are in Cyrillic script" in card


def test_the_dry_run_shows_the_baselines(blind_run, capsys):
    assert cli.main(["train", "--config", str(blind_run), "--dry-run"]) == 0
    assert ("baselines (accuracy without reading the text): val: most frequent class 0.6250, stratified guess"
            in capsys.readouterr().out)
