"""Duplicates and leakage: texts repeated in train, val/test texts also in train, texts with two labels; counted at
load time for every task, shown wherever the data is described, and dropped from val/test on request."""

import json
from pathlib import Path

import pytest

import finetune_pipeline as ft
from finetune_pipeline import cli
from finetune_pipeline.core.data import Example
from finetune_pipeline.core.leakage import leakage_report, normalised
from finetune_pipeline.errors import EXIT_BAD_INPUT
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import run_log
from tests.conftest import toy_rows, without_score_flags, write_csv


def examples(*rows) -> list[Example]:
    return [Example(text=text, label=label, line=index + 2, text_pair=pair)
            for index, (text, label, pair) in enumerate(row if len(row) == 3 else (*row, None) for row in rows)]


def test_normalising_ignores_case_spacing_punctuation_and_unicode_forms():
    assert normalised("  Great   FILM!!! ") == normalised("great film") == "great film"
    assert normalised("ﬁlm—good") == normalised("film good")  # NFKC: the ligature; the dash is punctuation
    assert normalised("Ёлка") == normalised("ёлка") != normalised("елка")  # letters stay letters


def test_the_report_counts_each_kind_exactly_and_normalised_for_every_label_type():
    train = examples(("Great film!", "pos"), ("great   FILM", "pos"), ("great film!", "pos"), ("bad", "neg"),
                     ("Bad.", "pos"))
    val = examples(("GREAT film", "pos"), ("new text", "neg"), ("bad", "neg"))
    test = examples(("another", "pos"))
    report = leakage_report(train, val, test)
    assert report["train_repeats"] == {"exact": 0, "normalised": 3, "examples": ["great   FILM", "great film!", "Bad."]}
    assert report["val_in_train"] == {"exact": 1, "normalised": 2, "examples": ["GREAT film", "bad"]}
    assert report["test_in_train"]["normalised"] == 0
    assert report["label_conflicts"] == {"texts": 1, "examples": ["bad (neg, pos)"]}

    # multi-label sets and regression numbers conflict the same way; a pair is one text
    multi = leakage_report(examples(("a b", ("joy",)), ("A, b", ("joy", "love"))), [], [])
    assert multi["label_conflicts"]["texts"] == 1 and multi["train_repeats"]["normalised"] == 1
    pairs = leakage_report(examples(("same", 1.0, "first"), ("same", 2.0, "second")),
                           examples(("SAME", 3.0, "First")), [])
    assert pairs["train_repeats"]["normalised"] == 0 and pairs["label_conflicts"]["texts"] == 1
    assert pairs["val_in_train"] == {"exact": 0, "normalised": 1, "examples": ["SAME / First"]}


@pytest.fixture
def leaky_data(tmp_path: Path) -> dict[str, str]:
    """Toy splits where 4 of the 16 val texts and 2 of the 16 test texts are train texts (in other case)."""
    train = toy_rows(48, seed=1)
    val = [(text.upper(), label) for text, label in train[:4]] + toy_rows(12, seed=2)
    test = [(f"{text}!", label) for text, label in train[4:6]] + toy_rows(14, seed=3)
    return {"train_file": str(write_csv(tmp_path / "train.csv", train)),
            "val_file": str(write_csv(tmp_path / "val.csv", val)),
            "test_file": str(write_csv(tmp_path / "test.csv", test))}


def test_a_run_counts_leakage_and_warns_of_it_everywhere(make_config, leaky_data, tmp_path, capsys):
    config = make_config(data=leaky_data)
    config_path = tmp_path / "leaky.json"
    config_path.write_text(json.dumps(config.to_plain()))
    assert cli.main(["train", "--config", str(config_path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "val 4 texts also in train (0 exactly); test 2 texts also in train (0 exactly)" in plan
    assert "WARNING: 4 of the 16 val texts (25.0%) are also in train" in plan

    assert cli.main(["train", "--config", str(config_path)]) == 0
    console = capsys.readouterr()
    run_dir = Path(console.out.strip().splitlines()[-1].removeprefix("run folder: "))
    assert "WARNING: 2 of the 16 test texts (12.5%) are also in train" in console.err
    leakage = json.loads((run_dir / artifacts.METRICS_FILE).read_text())["leakage"]
    assert (leakage["val_in_train"]["normalised"], leakage["test_in_train"]["normalised"]) == (4, 2)
    [event] = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "leakage")
    assert (event["val_in_train_normalised"], event["test_in_train_normalised"]) == ("4", "2")
    page = (run_dir / artifacts.REPORT_FILE).read_text(encoding="utf-8")
    assert "<h2>Duplicates and leakage</h2>" in page and "are also in train" in page.split("<h2>")[0]

    dropped = run_training(make_config(data={**leaky_data, "drop_leaked": True}))
    metrics = json.loads((dropped / artifacts.METRICS_FILE).read_text())
    assert metrics["split_sizes"] == {"train": 48, "val": 12, "test": 14}
    assert metrics["leakage"]["dropped"] == {"val": 4, "test": 2} and metrics["leakage"]["warnings"] == []
    warnings = without_score_flags(ft.compare([run_dir, dropped]).warnings)  # data.drop_leaked: one factor, fine
    assert warnings == [f"leakage differs: run {dropped.name} vs the reference {run_dir.name}: val texts also in "
                        "train: 4 → 0; test texts also in train: 2 → 0 — a split holding train texts scores memory "
                        "as well as skill; compare runs with the same overlap (data.drop_leaked, the same files)"]


def test_dropping_every_val_text_is_refused_before_anything_is_written(make_config, tmp_path, capsys):
    train = toy_rows(48, seed=1)
    data = {"train_file": str(write_csv(tmp_path / "train.csv", train)),
            "val_file": str(write_csv(tmp_path / "val.csv", train[:16])), "drop_leaked": True}
    config = make_config(data=data)
    config_path = tmp_path / "all-leaked.json"
    config_path.write_text(json.dumps(config.to_plain()))
    assert cli.main(["train", "--config", str(config_path)]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "data.drop_leaked: every val text is also in train" in error and "Traceback" not in error
    assert not Path(config.output.artifacts_root).exists()
