"""The Python API (finetune_pipeline.api): train on DataFrames and Datasets with a file's checks and a content hash,
Run objects, compare and sweep, one exception type and no sys.exit, and an import that stays cheap."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from tqdm import tqdm

import finetune_pipeline as ft
from finetune_pipeline.experiments.compare import CSV_COLUMNS
from finetune_pipeline.runs import memory_check
from finetune_pipeline.runtime.run_log import logger
from tests.conftest import REPO_ROOT, toy_rows, without_score_flags, write_csv


def frame(rows: list[tuple[str, str]], columns: tuple[str, str] = ("text", "label")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


TRAIN, VAL, TEST = frame(toy_rows(48, seed=1)), frame(toy_rows(16, seed=2)), frame(toy_rows(16, seed=3))


@pytest.fixture
def config(make_config) -> dict[str, Any]:
    """The tiny BERT's fast config, whose data files the DataFrames replace; one epoch is enough here."""
    return make_config(training={"epochs": 1}).to_plain()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> ft.Run:
    """One run on DataFrames, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("api-run")
    return ft.train({
        "seed": 7, "data": {"max_length": 32},
        "model": {"backbone": str(tiny_backbone_dir), "hidden_dim": 16, "dropout": 0.0},
        "training": {"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 0.01,
                     "mixed_precision": "no", "log_every_steps": 2, "device": "cpu"},
        "output": {"artifacts_root": str(folder / "artifacts"), "cache_dir": str(folder / "cache")},
    }, train=TRAIN, val=VAL, test=TEST)


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ft.UserInputError) as excinfo:  # a SystemExit would fail the test: it is no UserInputError
        call(*args, **kwargs)
    return str(excinfo.value)


# ---- DataFrames and Datasets ----------------------------------------------------------------------------------


def test_dataframes_train_and_are_recorded_by_the_sha256_of_their_stored_file(trained):
    assert trained.metrics["status"] == "completed"
    assert trained.metrics["split_sizes"] == {"train": 48, "val": 16, "test": 16}
    for split in ("train", "val", "test"):
        entry = trained.metrics["data_files"][split]
        stored = Path(entry["path"])
        assert stored.parent == Path(trained.config.output.cache_dir) / "dataframes"
        assert entry["sha256"] == stored.stem == hashlib.sha256(stored.read_bytes()).hexdigest()
        assert f"the DataFrame given as {split}= to ft.train" in trained.metrics["data_sources"][split]
    first_line = Path(trained.metrics["data_files"]["train"]["path"]).read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first_line) == dict(zip(("text", "label"), toy_rows(48, seed=1)[0], strict=True))


def test_the_same_dataframe_gives_the_same_sha256_and_another_dataframe_another(config):
    first = ft.train(config, train=TRAIN, val=VAL, test=TEST)
    again = ft.train(config, train=TRAIN.copy(), val=VAL, test=TEST)
    other = ft.train(config, train=frame(toy_rows(48, seed=4)), val=VAL, test=TEST)
    sha = [run.metrics["data_files"]["train"]["sha256"] for run in (first, again, other)]
    assert sha[0] == sha[1] != sha[2]
    assert first.metrics["data_files"]["val"] == other.metrics["data_files"]["val"]
    # compare's data check sees the difference, as it does for files
    result = ft.compare([first, other])
    assert any(warning.startswith("data differs") for warning in result.warnings)


def test_the_same_rows_as_csv_parquet_or_a_dataframe_are_the_same_data(config, tmp_path):
    as_csv, as_parquet = tmp_path / "train.csv", tmp_path / "train.parquet"
    TRAIN.to_csv(as_csv, index=False)
    TRAIN.to_parquet(as_parquet)
    runs = [ft.train(config, train=train, val=VAL, test=TEST) for train in (TRAIN, as_csv, as_parquet)]
    entries = [run.metrics["data_files"]["train"] for run in runs]
    assert len({entry["rows_sha256"] for entry in entries}) == 1  # the rows read
    assert len({entry["sha256"] for entry in entries}) == 3  # the bytes stored
    assert not [warning for warning in ft.compare(runs).warnings if warning.startswith("data differs")]
    # a run recorded before rows were hashed: every run is checked by its file's bytes, which differ
    metrics = runs[2].metrics | {"data_files": {split: entry and {key: value for key, value in entry.items()
                                                                   if key != "rows_sha256"}
                                                for split, entry in runs[2].metrics["data_files"].items()}}
    (runs[2].dir / "metrics.json").write_text(json.dumps(metrics))
    assert [warning for warning in ft.compare(runs).warnings if warning.startswith("data differs")]


def test_train_given_without_val_and_test_carves_them_out_of_it(config):
    config["data"] = {"max_length": 32}  # the default dataset's files: with train data of its own, val and test go
    run = ft.train(config, train=frame(toy_rows(60, seed=1)))
    assert run.metrics["data_files"]["val"] is None and run.metrics["data_files"]["test"] is None
    assert sum(run.metrics["split_sizes"].values()) == 60
    assert "split from data.train_file" in run.metrics["data_sources"]["val"]


def test_a_dataset_trains_with_its_class_label_names_and_its_own_columns(config):
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "polarity": datasets.ClassLabel(names=["neg", "pos"])})

    def dataset(rows: list[tuple[str, str]]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"sentence": [text for text, _ in rows],
                                           "polarity": [label for _, label in rows]}, features=features)

    run = ft.train(config, train=dataset(toy_rows(48, seed=1)), val=dataset(toy_rows(16, seed=2)),
                   test=dataset(toy_rows(16, seed=3)), text_column="sentence", label_column="polarity")
    assert run.metrics["status"] == "completed" and run.metrics["label_names"] == ["neg", "pos"]
    assert "the Dataset given as train=" in run.metrics["data_sources"]["train"]
    assert run.config.data.text_column == "sentence"


def test_labels_are_stripped_of_whitespace_as_in_a_file(config):
    rows = [(text, f" {label} " if index % 3 == 0 else label) for index, (text, label) in enumerate(toy_rows(48, 1))]
    assert ft.train(config, train=frame(rows), val=VAL, test=TEST).metrics["label_names"] == ["neg", "pos"]


def test_a_missing_column_lists_the_columns_found(config):
    message = error_of(ft.train, config, train=frame(toy_rows(48, 1), ("review", "sentiment")), val=VAL, test=TEST)
    assert "the DataFrame given as train=: no text column 'text'; columns found: review, sentiment" in message
    assert "text_column= of ft.train" in message


def test_labels_that_differ_only_by_case_are_an_error_naming_the_dataframe(config):
    rows = [(text, "Pos" if index == 5 else label) for index, (text, label) in enumerate(toy_rows(48, 1))]
    message = error_of(ft.train, config, train=frame(rows), val=VAL, test=TEST)
    assert "labels that differ only by upper/lower case" in message and "'Pos'" in message
    assert "the DataFrame given as train= to ft.train" in message


def test_a_val_label_unseen_in_train_names_the_row(config):
    rows = [(text, "neutral" if index == 2 else label) for index, (text, label) in enumerate(toy_rows(16, 2))]
    message = error_of(ft.train, config, train=TRAIN, val=frame(rows), test=TEST)
    # the DataFrame's own row, not a line of the file it was stored as
    assert "the DataFrame given as val= to ft.train, row .iloc[2]: val label 'neutral' never occurs" in message
    assert "line 3" not in message and ".jsonl" not in message


def test_an_empty_or_missing_text_is_an_error_with_its_row(config):
    for missing in ("  ", None, float("nan")):
        rows = [("" if index == 3 else text, label) for index, (text, label) in enumerate(toy_rows(48, 1))]
        table = frame(rows)
        table.loc[3, "text"] = missing
        message = error_of(ft.train, config, train=table, val=VAL, test=TEST)
        assert "the DataFrame given as train= to ft.train, row .iloc[3], column 'text': empty text" in message


def test_bad_input_leaves_no_run_folder_and_never_exits(config):
    errors = [
        error_of(ft.train, config, {"model.dropot": 0.3}, train=TRAIN),
        error_of(ft.train, "no/such/config.json"),
        error_of(ft.train, 42),
        error_of(ft.train, config, train=[("good", "pos")]),
        error_of(ft.train, config, train=datasets.DatasetDict({"train": datasets.Dataset.from_pandas(TRAIN)})),
        error_of(ft.train, config, {"data.train_file": "x.csv"}, train=TRAIN),
        error_of(ft.train, config, train="no/such/file.csv"),
        error_of(ft.load_run, config["output"]["artifacts_root"]),
        error_of(ft.compare, []),
        error_of(ft.sweep),
        error_of(ft.sweep, "A", seeds="42,43"),
    ]
    assert "did you mean 'model.dropout'" in errors[0]
    assert "file not found" in errors[1]
    assert "got a list" in errors[3] and "give one, e.g. train=data['train']" in errors[4]
    assert "(data.train_file = no/such/file.csv: given as train= to ft.train)" in errors[6]
    assert not Path(config["output"]["artifacts_root"]).exists()


def test_out_of_memory_is_a_user_input_error_with_the_call_that_reruns_it(config, monkeypatch):
    monkeypatch.setattr(memory_check, "peak_process_memory_mb", lambda: 2.0**20)  # as if the step took 1 TiB
    config["training"]["freeze_backbone"] = False
    with pytest.raises(ft.OutOfMemory) as excinfo:
        ft.train(config, train=TRAIN, val=VAL, test=TEST)
    assert isinstance(excinfo.value, ft.UserInputError) and issubclass(ft.TrainingDiverged, ft.UserInputError)
    assert "Rerun it with the first of them: ft.train(" in str(excinfo.value)
    assert str(excinfo.value.run_dir / "config.json") in str(excinfo.value)


def test_repeated_calls_leave_one_console_handler_and_no_progress_bar(config):
    root_handlers = len(logging.getLogger().handlers)
    counts = []
    for seed in (1, 2, 3):
        ft.train(config, {"seed": seed}, train=TRAIN, val=VAL, test=TEST)
        counts.append((len(logger.handlers), len(logging.getLogger().handlers), len(tqdm._instances)))
    assert counts == [(1, root_handlers, 0)] * 3  # the console; each run's train.log handler is gone with its run


# ---- Run ------------------------------------------------------------------------------------------------------


def test_load_run_predict_and_evaluate_round_trip(trained):
    run = ft.load_run(trained.dir)
    assert run.metrics == trained.metrics and run.config == trained.config
    predictions = run.predict(["good movie", "the plot was awful"])
    assert list(predictions.columns) == ["text", "label", "prob_neg", "prob_pos"]
    assert predictions["text"].tolist() == ["good movie", "the plot was awful"]
    assert predictions[["prob_neg", "prob_pos"]].sum(axis=1).round(6).tolist() == [1.0, 1.0]
    assert run.predict("good movie")["label"].tolist() == predictions["label"][:1].tolist()
    # the run's own test split, as a DataFrame or as a file, gives the run's test metrics
    accuracy = run.metrics["test_metrics"]["accuracy"]
    assert run.evaluate(TEST)["accuracy"] == accuracy
    assert run.evaluate(write_csv(run.dir.parent / "test.csv", toy_rows(16, seed=3)))["accuracy"] == accuracy
    unseen = error_of(run.evaluate, frame([("good movie", "neutral")]))
    assert "label 'neutral' never occurs" in unseen and "the DataFrame given as data= to Run.evaluate" in unseen
    assert "item 2 of 2 is a float" in error_of(run.predict, ["good movie", float("nan")])


def test_a_run_shows_its_numbers_and_curves_in_a_notebook(trained):
    page = trained._repr_html_()
    assert "best_val_score" in page and "data:image/png;base64," in page
    assert repr(trained).startswith(f"Run({str(trained.dir)!r}, completed, best val accuracy ")


def test_export_writes_the_transformers_folder(trained, tmp_path):
    folders = trained.export(output=tmp_path / "exported")
    assert folders == {"hf": tmp_path / "exported" / "hf"} and (folders["hf"] / "config.json").is_file()


# ---- compare and sweep ----------------------------------------------------------------------------------------


def test_compare_returns_compare_csv_as_a_table_and_warns_of_two_changed_factors(trained, config):
    changed = ft.train(trained.config, {"model.dropout": 0.3, "model.hidden_dim": 8})
    result = ft.compare([str(trained.dir), changed], ref=trained)
    assert list(result.table.columns) == list(CSV_COLUMNS) and len(result.table) == 2
    assert result.table["run"].tolist() == [trained.dir.name, changed.dir.name]
    assert result.table["best_val_score"].tolist() == [trained.metrics["best_val_score"],
                                                       changed.metrics["best_val_score"]]
    (warning,) = without_score_flags(result.warnings)
    assert "in 2 factors" in warning and "model.dropout" in warning and "model.hidden_dim" in warning
    assert result.resolution[0].startswith("val: 16 texts, one example = 0.0625")
    assert (result.dir / "compare.csv").is_file() and result.dir.parent.name == "comparisons"
    page = result._repr_html_()
    assert "WARNING:" in page and "data:image/png;base64," in page


def test_sweep_reruns_a_run_with_other_seeds_and_compares_them(trained):
    result = ft.sweep(from_runs=trained, seeds=[8, 9])
    assert [run.metrics["seed"] for run in result.runs] == [8, 9] and result.failures == []
    assert (result.dir / "sweep.json").is_file() and result.comparison.dir == result.dir
    assert len(result.comparison.table) == 2
    assert ft.compare(result.dir).table["run"].tolist() == result.comparison.table["run"].tolist()


# ---- the package -----------------------------------------------------------------------------------------------


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, finetune_pipeline as ft; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert ft.UserInputError.__name__ == 'UserInputError'; assert 'train' in dir(ft)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_the_api_names_are_functions_and_the_modules_live_in_their_subpackages():
    import finetune_pipeline.experiments.compare
    import finetune_pipeline.experiments.sweep

    assert callable(ft.compare) and callable(ft.sweep) and callable(ft.train)
    assert hasattr(finetune_pipeline.experiments.sweep, "load_sweep")

def test_importing_the_package_api_does_not_load_transformers_model_code():
    # a run on cached features never needs it (seconds of imports); the exported model's code loads on export
    script = ("import sys; import finetune_pipeline as ft; ft.train; "
              "print('model code imported:', 'transformers.modeling_utils' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert "model code imported: False" in result.stdout


@pytest.mark.parametrize("texts", [123, b"bytes", {"text": "a dict"}, None], ids=["int", "bytes", "dict", "None"])
def test_predict_given_something_that_is_not_text_raises_the_one_error_type(texts, tmp_path):
    from finetune_pipeline.api import checked_strings

    with pytest.raises(ft.UserInputError, match="texts: expected a string or a list of strings; got a"):
        checked_strings(texts, "texts")


def test_a_notebook_cell_shows_warnings_not_every_log_event(tiny_backbone_dir, tmp_path, capsys):
    run = ft.train({"seed": 7, "data": {"max_length": 32},
                    "model": {"backbone": str(tiny_backbone_dir), "hidden_dim": 16},
                    "training": {"epochs": 1, "mixed_precision": "no", "device": "cpu"},
                    "output": {"artifacts_root": str(tmp_path / "artifacts"), "cache_dir": str(tmp_path / "cache")}},
                   train=TRAIN, val=VAL, test=TEST)
    shown = capsys.readouterr().err
    assert "event=epoch" not in shown and "event=step" not in shown  # the events are in train.log instead
    assert "event=epoch" in (run.dir / "train.log").read_text(encoding="utf-8")


def test_an_empty_dataframe_is_called_empty(tmp_path):
    with pytest.raises(ft.UserInputError, match=r"the DataFrame given as train=: is empty \(no rows\); train= needs"):
        ft.train({"output": {"artifacts_root": str(tmp_path / "a"), "cache_dir": str(tmp_path / "c")}},
                 train=pd.DataFrame(), val=VAL, test=TEST)
