"""One's own train file never meets the default dataset's val and test files, and every file error says how
that file was chosen (the default, a config file, --set)."""

import json
import shutil
from pathlib import Path

import pytest

from finetune_pipeline import cli
from finetune_pipeline.core.config import DEFAULT_DATA_FILES, config_from_dict, load_config
from finetune_pipeline.core.data import describe_sources, load_splits
from finetune_pipeline.errors import EXIT_BAD_INPUT
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime.run_log import read_events
from tests.conftest import REPO_ROOT, toy_rows, write_csv

SHIPPED_CONFIG = REPO_ROOT / "finetune_pipeline" / "configs" / "train_config.json"


def copy_of_shipped_config(tmp_path: Path, data: dict) -> Path:
    """What the guide tells a student to do: copy train_config.json and change a value or two."""
    raw = json.loads(SHIPPED_CONFIG.read_text())
    raw["data"].update(data)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(raw))
    return path


def test_own_train_file_splits_val_and_test_from_itself(tmp_path):
    # in a copy of train_config.json the default dataset's val_file and test_file are written out explicitly
    config = load_config(copy_of_shipped_config(tmp_path, {"train_file": "reviews.csv"}))
    assert (config.data.val_file, config.data.test_file) == (None, None)
    assert describe_sources(config.data, config.seed) == {
        "train": f"reviews.csv (set in {tmp_path / 'mine.json'})",
        "val": "10% of the train file, stratified by label, seed 42 (split from data.train_file: the default "
               "dataset's val file never goes with another train file)",
        "test": "10% of the train file, stratified by label, seed 42 (split from data.train_file: the default "
                "dataset's test file never goes with another train file)",
    }
    # the same from a config that names only its train file, and from --set
    assert config_from_dict({"data": {"train_file": "reviews.csv"}}).data.val_file is None
    overridden = load_config(SHIPPED_CONFIG, {"data.train_file": "reviews.csv"})
    assert (overridden.data.val_file, overridden.data.test_file) == (None, None)
    assert describe_sources(overridden.data, 42)["train"] == "reviews.csv (set with --set)"


def test_an_explicit_val_or_test_file_of_ones_own_still_wins(tmp_path):
    config = load_config(SHIPPED_CONFIG, {"data.train_file": "reviews.csv", "data.val_file": "my_val.csv"})
    assert (config.data.val_file, config.data.test_file) == ("my_val.csv", None)
    assert describe_sources(config.data, 42)["val"] == "my_val.csv (set with --set)"


def test_the_default_dataset_keeps_its_own_files():
    for config in (config_from_dict({}), load_config(SHIPPED_CONFIG),
                   config_from_dict({"data": {"train_file": "./" + DEFAULT_DATA_FILES["train"]}})):
        assert (config.data.val_file, config.data.test_file) == (DEFAULT_DATA_FILES["val"], DEFAULT_DATA_FILES["test"])
    assert describe_sources(load_config(SHIPPED_CONFIG).data, 42)["val"] == (
        f"{DEFAULT_DATA_FILES['val']} (set in {SHIPPED_CONFIG})")


def test_the_effective_config_is_stable_when_read_back():
    """A run's config.json holds val_file null: read back (resume, --from-run) it means the same split."""
    config = config_from_dict({"data": {"train_file": "reviews.csv"}})
    again = config_from_dict(config.to_plain())
    assert again == config and again.fingerprint() == config.fingerprint()


def test_a_run_on_own_data_never_reads_the_default_dataset(make_config, tmp_path, monkeypatch, capsys):
    """Only the train file exists here: the run splits val and test from it, and train.log and the dry run say so."""
    monkeypatch.chdir(tmp_path)
    own = write_csv(tmp_path / "reviews.csv", toy_rows(100, seed=5))
    assert not Path(DEFAULT_DATA_FILES["val"]).exists()
    plain = make_config().to_plain()
    plain["data"] = {"train_file": str(own), "max_length": 32}
    config_path = tmp_path / "own.json"
    config_path.write_text(json.dumps(plain))

    assert cli.main(["train", "--config", str(config_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert (f"data: train {own} (set in {config_path}); val 10% of the train file, stratified by label, "
            "seed 7") in printed
    assert "splits: train 80, val 10, test 10" in printed

    run_dir = run_training(load_config(config_path))
    [sources] = read_events(run_dir / "train.log", "data_sources")
    assert sources["train"].startswith(str(own)) and sources["val"].startswith("10% of the train file")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"train": 80, "val": 10, "test": 10}
    assert metrics["data_files"]["val"] is None  # carved: the train file's hash covers it
    assert json.loads((run_dir / "config.json").read_text())["data"]["val_file"] is None


@pytest.mark.parametrize("how, origin", [("config", "set in {config}"), ("set", "set with --set")])
def test_a_val_file_error_names_how_the_file_was_chosen(tmp_path, how, origin, capsys):
    train = write_csv(tmp_path / "train.csv", toy_rows(20, seed=1))
    val = write_csv(tmp_path / "val.csv", toy_rows(10, seed=2), header=("review", "label"))
    config = tmp_path / "mine.json"
    val_setting = {"val_file": str(val)} if how == "config" else {}
    config.write_text(json.dumps({"data": {"train_file": str(train), **val_setting}}))
    extra = ["--set", f"data.val_file={val}"] if how == "set" else []
    assert cli.main(["train", "--config", str(config), *extra, "--dry-run"]) == EXIT_BAD_INPUT
    message = capsys.readouterr().err
    assert f"{val}, line 1: no text column 'text'" in message
    assert f"(data.val_file = {val}: {origin.format(config=config)})" in message


def test_a_default_file_error_says_it_is_the_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "finetune_pipeline" / "data" / "rotten_tomatoes").mkdir(parents=True)
    for split, path in DEFAULT_DATA_FILES.items():
        shutil.copy(write_csv(tmp_path / f"{split}.csv", toy_rows(20, seed=1)), path)
    with pytest.raises(Exception) as excinfo:
        load_splits(load_config(copy_of_shipped_config(tmp_path, {"text_column": "review"})).data, seed=0)
    assert "(data.train_file = finetune_pipeline/data/rotten_tomatoes/train.csv: set in" in str(excinfo.value)
    config = tmp_path / "minimal.json"
    config.write_text(json.dumps({"data": {"text_column": "review"}}))
    with pytest.raises(Exception) as excinfo:
        load_splits(load_config(config).data, seed=0)
    assert "(data.train_file = finetune_pipeline/data/rotten_tomatoes/train.csv: the default)" in str(excinfo.value)
