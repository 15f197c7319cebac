"""Using a finished run: evaluate_file, predict_texts and predict_file on a tiny run trained once."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from finetune_pipeline.core.config import config_from_dict
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.serving.inference import evaluate_file, predict_file, predict_texts
from tests.conftest import toy_rows, write_csv

TEST_ROWS = toy_rows(16, seed=3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> Path:
    """One run that learned the toy task (trained backbone, as in test_training's learnability test)."""
    folder = tmp_path_factory.mktemp("inference-run")
    config = config_from_dict({
        "seed": 7,
        "data": {"train_file": str(write_csv(folder / "train.csv", toy_rows(48, seed=1))),
                 "val_file": str(write_csv(folder / "val.csv", toy_rows(16, seed=2))),
                 "test_file": str(write_csv(folder / "test.csv", TEST_ROWS)), "max_length": 32},
        "model": {"backbone": str(tiny_backbone_dir), "hidden_dim": 16, "dropout": 0.0},
        "training": {"epochs": 8, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 0.05,
                     "encoder_learning_rate": 0.005, "warmup_ratio": 0.0, "freeze_backbone": False,
                     "mixed_precision": "no", "device": "cpu"},
        "output": {"artifacts_root": str(folder / "artifacts"), "cache_dir": str(folder / "cache")},
    })
    run_dir = run_training(config)
    # predictions that are not all one class, so that agreeing with them means something
    assert read_metrics(run_dir)["test_metrics"]["accuracy"] >= 0.75
    return run_dir


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.METRICS_FILE).read_text())


def own_test_file(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / artifacts.CONFIG_FILE).read_text())["data"]["test_file"])


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(UserInputError) as excinfo:
        call(*args, **kwargs)
    return str(excinfo.value)


# --- evaluate_file -----------------------------------------------------------------------------------


def test_evaluating_the_runs_own_test_file_gives_its_test_metrics(run_dir):
    test_path = own_test_file(run_dir)
    metrics, written = evaluate_file(run_dir, test_path)
    expected = read_metrics(run_dir)["test_metrics"]
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert metrics[key] == expected[key], key
    assert metrics["examples"] == 16
    assert metrics["label_names"] == ["neg", "pos"]
    assert metrics["checkpoint"] == "best_model.pt"
    assert metrics["data_file"] == str(test_path.resolve())
    assert metrics["data_sha256"] == hashlib.sha256(test_path.read_bytes()).hexdigest()
    assert written == run_dir / "evaluations" / "test.json"
    assert json.loads(written.read_text()) == metrics
    assert not list(written.parent.glob(".*.tmp"))


def test_a_frozen_run_with_cached_features_round_trips_too(make_config, toy_data):
    run_dir = run_training(make_config(training={"freeze_backbone": True, "cache_features": True}))
    metrics, _ = evaluate_file(run_dir, Path(toy_data["test_file"]))
    expected = read_metrics(run_dir)["test_metrics"]
    assert (metrics["accuracy"], metrics["confusion_matrix"]) == (expected["accuracy"], expected["confusion_matrix"])


def test_other_columns_whitespace_around_labels_and_a_name(run_dir, tmp_path):
    """Another file layout: columns named on the call, labels with spaces; the metrics do not change."""
    path = write_csv(tmp_path / "spaced.csv", [(text, f"  {label} ") for text, label in TEST_ROWS],
                     header=("sentence", "y"))
    metrics, written = evaluate_file(run_dir, path, text_column="sentence", label_column="y", name="spaced-copy")
    assert written == run_dir / "evaluations" / "spaced-copy.json"
    assert metrics["confusion_matrix"] == read_metrics(run_dir)["test_metrics"]["confusion_matrix"]


def test_a_label_that_differs_only_by_case_gets_a_did_you_mean(run_dir, tmp_path):
    path = write_csv(tmp_path / "cased.csv", [("good movie", "pos"), ("bad movie", "Neg")])
    message = error_of(evaluate_file, run_dir, path)
    assert str(path) in message and "line 3" in message
    assert "'Neg'" in message and "did you mean 'neg'?" in message.lower()
    assert not (run_dir / "evaluations" / "cased.json").exists()


def test_an_unknown_label_lists_the_runs_labels(run_dir, tmp_path):
    path = write_csv(tmp_path / "three.csv", [("good movie", "pos"), ("the plot", "neutral")])
    message = error_of(evaluate_file, run_dir, path)
    assert "'neutral'" in message and "line 3" in message
    assert "['neg', 'pos']" in message
    assert "did you mean" not in message.lower()


def test_a_missing_column_names_the_option_to_set(run_dir, tmp_path):
    path = write_csv(tmp_path / "renamed.csv", TEST_ROWS, header=("review", "label"))
    message = error_of(evaluate_file, run_dir, path)
    assert "'text'" in message and "review, label" in message
    assert "--text-column" in message


@pytest.mark.parametrize("name", ["../escape", "a/b", "a\\b", "..", ""])
def test_evaluation_names_with_path_separators_are_refused(run_dir, name):
    message = error_of(evaluate_file, run_dir, own_test_file(run_dir), name=name)
    assert repr(name) in message
    assert not (run_dir.parent / "escape.json").exists()


def test_a_run_without_its_checkpoint_says_why(run_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    # a run stopped in its first epoch: config.json and metrics.json are written at its start
    shutil.copy(run_dir / artifacts.CONFIG_FILE, unfinished / artifacts.CONFIG_FILE)
    shutil.copy(run_dir / artifacts.METRICS_FILE, unfinished / artifacts.METRICS_FILE)
    message = error_of(evaluate_file, unfinished, own_test_file(run_dir))
    assert f"no best_model.pt in {unfinished}" in message
    assert "first epoch" in message
    assert "no such run folder" in error_of(predict_texts, tmp_path / "absent", ["good"])


# --- predict_texts -----------------------------------------------------------------------------------


def test_predictions_are_distributions_that_agree_with_evaluate(run_dir):
    texts = [text for text, _ in TEST_ROWS]
    predictions = predict_texts(run_dir, texts)
    assert [prediction.text for prediction in predictions] == texts
    for prediction in predictions:
        assert list(prediction.probabilities) == ["neg", "pos"]
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert prediction.label == max(prediction.probabilities, key=prediction.probabilities.get)
    # evaluate's confusion matrix, rebuilt from these predictions: rows = true label, columns = predicted
    names = ["neg", "pos"]
    rebuilt = [[sum(1 for (_, true), p in zip(TEST_ROWS, predictions, strict=True)
                    if true == row and p.label == column) for column in names] for row in names]
    assert rebuilt == read_metrics(run_dir)["test_metrics"]["confusion_matrix"]


def test_predictions_keep_the_input_order_across_length_sorted_batches(run_dir):
    texts = ["good", "the movie was really quite bad", "awful plot", "the film was a fun story", "sad", "nice actor"]
    together = predict_texts(run_dir, texts, batch_size=2)
    alone = [predict_texts(run_dir, [text])[0] for text in texts]
    assert [p.text for p in together] == texts
    assert [p.label for p in together] == [p.label for p in alone]
    for batched, single in zip(together, alone, strict=True):
        assert batched.probabilities == pytest.approx(single.probabilities, abs=1e-5)


def test_texts_longer_than_max_length_are_truncated_like_training(run_dir):
    long_text = "good " + "the movie " * 40  # 81 words > max_length 32 (and > the tiny BERT's 64 positions)
    [prediction] = predict_texts(run_dir, [long_text])
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("texts, expected", [([], "no texts"), (["good", "  "], "text 2 of 2 is empty")])
def test_no_texts_or_an_empty_text_is_an_error(run_dir, texts, expected):
    assert expected in error_of(predict_texts, run_dir, texts)


# --- predict_file ------------------------------------------------------------------------------------


def test_predict_file_csv_to_csv(run_dir, tmp_path):
    texts = ['good, "quoted" movie', "bad film", "the plot was dull"]
    source = tmp_path / "in.csv"
    with source.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([("id", "text"), *((index, text) for index, text in enumerate(texts))])
    output = tmp_path / "out" / "predictions.csv"
    assert predict_file(run_dir, source, output).labelled == 3
    with output.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["id", "text", "label", "prob_neg", "prob_pos"]  # the input's columns kept
    assert [row["id"] for row in rows] == ["0", "1", "2"]
    expected = predict_texts(run_dir, texts)
    assert [row["text"] for row in rows] == texts
    assert [row["label"] for row in rows] == [p.label for p in expected]
    for row, prediction in zip(rows, expected, strict=True):
        assert float(row["prob_neg"]) == pytest.approx(prediction.probabilities["neg"])
        assert float(row["prob_neg"]) + float(row["prob_pos"]) == pytest.approx(1.0, abs=1e-6)


def test_predict_file_txt_to_jsonl_skips_blank_lines(run_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes("great story\r\n\r\n   \r\nworst actor ünïcödé\r\n".encode("utf-8-sig"))
    output = tmp_path / "out.jsonl"
    assert predict_file(run_dir, source, output).labelled == 2
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    expected = predict_texts(run_dir, ["great story", "worst actor ünïcödé"])
    assert [record["text"] for record in records] == ["great story", "worst actor ünïcödé"]
    assert [record["label"] for record in records] == [p.label for p in expected]
    assert [record["probabilities"] for record in records] == [pytest.approx(p.probabilities) for p in expected]


def test_predict_file_reads_another_text_column_and_needs_no_labels(run_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"review": "good film"}\n{"review": "sad story"}\n', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    assert predict_file(run_dir, source, output, text_column="review").labelled == 2
    message = error_of(predict_file, run_dir, source, tmp_path / "again.jsonl")
    assert "no key 'text'" in message and "review" in message and "--text-column" in message


@pytest.mark.parametrize("suffix", [".tsv", ".json", ""])
def test_an_unsupported_output_suffix_is_an_error(run_dir, tmp_path, suffix):
    output = tmp_path / f"out{suffix}"
    message = error_of(predict_file, run_dir, own_test_file(run_dir), output)
    assert ".csv, .jsonl" in message
    assert not output.exists()


def test_the_output_may_not_overwrite_the_input(run_dir, tmp_path):
    source = write_csv(tmp_path / "in.csv", TEST_ROWS)
    before = source.read_bytes()
    assert "is the input file" in error_of(predict_file, run_dir, source, source)
    assert source.read_bytes() == before


def test_evaluate_and_predict_read_a_file_as_the_run_read_its_data(make_config, tmp_path, capsys):
    """A Windows-1251 test file that trained fine evaluates without options; another file takes --encoding."""
    from finetune_pipeline import cli
    from finetune_pipeline.runs.run import run_training
    from tests.conftest import toy_rows

    def cp1251_csv(name: str, rows: list[tuple[str, str]]) -> Path:
        path = tmp_path / name
        path.write_bytes(("text;label\n" + "".join(f"{text} отлично;{label}\n" for text, label in rows)).encode("cp1251"))
        return path

    test_file = cp1251_csv("test_1251.csv", toy_rows(16, seed=3))
    run_dir = run_training(make_config(data={"test_file": str(test_file), "encoding": "cp1251"},
                                       training={"epochs": 1}))
    recorded = json.loads((run_dir / "metrics.json").read_text())["test_metrics"]
    assert cli.main(["evaluate", str(run_dir), "--data", str(test_file)]) == 0, capsys.readouterr().err
    evaluated = json.loads((run_dir / "evaluations" / "test_1251.json").read_text())
    assert evaluated["examples"] == 16 and evaluated["accuracy"] == pytest.approx(recorded["accuracy"])
    other = cp1251_csv("other_1251.csv", toy_rows(8, seed=4))
    output = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(run_dir), "--input", str(other), "--output", str(output)]) == 0
    assert "отлично" in output.read_text(encoding="utf-8")  # read as cp1251, written as UTF-8
    assert cli.main(["evaluate", str(run_dir), "--data", str(other), "--encoding", "utf-8"]) == 2
    assert "--encoding" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run_dir), "--data", str(other), "--encoding", "no-such-codec"]) == 2
    assert "--encoding 'no-such-codec': not an encoding Python knows" in capsys.readouterr().err


def test_predict_file_keeps_every_row_in_order_and_leaves_an_empty_text_unlabelled(run_dir, tmp_path, capsys):
    from finetune_pipeline import cli

    source = tmp_path / "labelled.csv"
    source.write_text('id,text,label\n7,good film,pos\n8,"",neg\n9,bad plot,neg\n', encoding="utf-8")
    output = tmp_path / "out.csv"
    assert cli.main(["predict", str(run_dir), "--input", str(source), "--output", str(output)]) == 0
    assert "1 row(s) with an empty text left unlabelled" in capsys.readouterr().err
    with output.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    # the file's own "label" stays; the prediction's columns are named apart
    assert list(rows[0]) == ["id", "text", "label", "predicted_label", "predicted_prob_neg", "predicted_prob_pos"]
    assert [(row["id"], row["label"]) for row in rows] == [("7", "pos"), ("8", "neg"), ("9", "neg")]
    assert rows[1]["predicted_label"] == "" and rows[0]["predicted_label"] in ("neg", "pos")

    one_column = tmp_path / "one.csv"
    one_column.write_text("text\ngood film\n\nbad plot\n\n", encoding="utf-8")  # a blank row inside, one at the end
    assert predict_file(run_dir, one_column, tmp_path / "one.jsonl") == (2, [3])
    records = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(record["text"], record["label"] is None) for record in records] == [
        ("good film", False), ("", True), ("bad plot", False)]


EVALUATED_MODES = {  # training section -> how evaluate reads the file
    "frozen": ({}, "the run's backbone features of the file (cache: hit)"),
    "frozen, cache deleted": ({}, "the run's backbone features of the file (cache: miss)"),
    "top layer": ({"freeze_backbone": False, "train_top_layers": 1},
                  "the run's hidden states entering layer 1 of the file (cache: hit)"),
    "whole backbone": ({"freeze_backbone": False}, "the model on the file"),
}


@pytest.mark.parametrize("mode", EVALUATED_MODES)
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_evaluate_on_a_runs_own_files_gives_exactly_its_metrics(make_config, precision, mode):
    """Whatever the CPU does with bf16: the run's own test and val files are read as the run's loop read them
    (cached features or hidden states, found in the cache or computed split by split as the run computed them),
    in its batches, so every metric is the run's, digit for digit."""
    training, read_as = EVALUATED_MODES[mode]
    config = make_config(training={"mixed_precision": precision, "epochs": 2, **training})
    run_dir = run_training(config)
    if mode == "frozen, cache deleted":
        shutil.rmtree(config.output.cache_dir)
    recorded = json.loads((run_dir / "metrics.json").read_text())
    data = json.loads((run_dir / artifacts.CONFIG_FILE).read_text())["data"]
    test, _ = evaluate_file(run_dir, Path(data["test_file"]))
    assert test["inputs"] == read_as + ("" if mode == "whole backbone" else ", as the run scored its splits")
    assert {key: test[key] for key in recorded["test_metrics"]} == recorded["test_metrics"]
    val, _ = evaluate_file(run_dir, Path(data["val_file"]))
    assert val["accuracy"] == recorded["best_val_score"]


def test_evaluate_says_when_macro_f1_counts_labels_the_file_lacks(run_dir, tmp_path, capsys):
    from finetune_pipeline import cli

    only_positive = write_csv(tmp_path / "positive.csv", [(text, label) for text, label in TEST_ROWS if label == "pos"])
    assert cli.main(["evaluate", str(run_dir), "--data", str(only_positive)]) == 0
    assert "note: 1 of the run's 2 labels never occur in this file (neg); macro-F1 averages over every label" \
        in capsys.readouterr().out
