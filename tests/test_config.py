"""Tests for finetune_pipeline.core.config: defaults, validation messages, loading, and the CLI's error path."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_pipeline.core.config import Config, config_from_dict, flatten, key_table, load_config
from finetune_pipeline.errors import EXIT_BAD_INPUT, UserInputError

REPO_ROOT = Path(__file__).parents[1]
CONFIGS_DIR = REPO_ROOT / "finetune_pipeline" / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "train_config.json"
EXP1_CONFIG = CONFIGS_DIR / "train_config_exp1.json"


def error_message(raw: Any) -> str:
    with pytest.raises(UserInputError) as excinfo:
        config_from_dict(raw)
    return str(excinfo.value)


# --- shipped configs -------------------------------------------------------------------------------


def test_shipped_default_config_is_exactly_the_schema_defaults():
    assert config_from_dict({}) == load_config(DEFAULT_CONFIG)
    assert config_from_dict({}).to_plain() == load_config(DEFAULT_CONFIG).to_plain()


def test_shipped_default_config_loads_independent_of_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(DEFAULT_CONFIG) == Config()


def test_exp1_config_differs_from_default_in_exactly_one_leaf_key():
    default = flatten(json.loads(DEFAULT_CONFIG.read_text(encoding="utf-8")))
    exp1 = flatten(json.loads(EXP1_CONFIG.read_text(encoding="utf-8")))
    assert default.keys() == exp1.keys()
    differing = [key for key in default if default[key] != exp1[key]]
    assert len(differing) == 1, differing
    # and both are valid configs that differ after validation too
    assert load_config(DEFAULT_CONFIG) != load_config(EXP1_CONFIG)


# --- unknown keys ----------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_close_match():
    message = error_message({"trainig": {"epochs": 1}})
    assert "trainig" in message
    assert "did you mean 'training'" in message


def test_nested_typo_suggests_the_dotted_key():
    message = error_message({"training": {"batch_sise": 4}})
    assert "training.batch_sise" in message
    assert "did you mean 'training.batch_size'" in message


def test_key_in_the_wrong_section_suggests_the_right_section():
    message = error_message({"training": {"dropout": 0.2}})
    assert "training.dropout" in message
    assert "did you mean 'model.dropout'" in message


def test_unknown_key_without_any_close_match_lists_the_allowed_keys():
    message = error_message({"model": {"zzzzzzzz": 1}})
    assert "model.zzzzzzzz" in message
    assert "did you mean" not in message
    for key in ("backbone", "pooling", "hidden_dim", "dropout"):
        assert key in message


# --- types and ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        # wrong types: strict, no coercion
        ("training", "batch_size", "8"),
        ("training", "freeze_backbone", 1),
        ("training", "epochs", 0.5),
        # out of range / not one of the allowed values
        ("training", "batch_size", 0),
        ("training", "learning_rate", -1),
        ("model", "dropout", 1.0),
        ("data", "max_length", 0),
        ("model", "pooling", "max"),
        ("training", "mixed_precision", "fp8"),
    ],
)
def test_bad_values_are_rejected_with_key_and_value(section, key, value):
    message = error_message({section: {key: value}})
    assert f"{section}.{key}" in message
    assert f"(got {json.dumps(value)})" in message
    assert "1 invalid value(s)" in message


def test_every_bad_value_is_reported_at_once():
    message = error_message({"training": {"batch_size": 0, "epochs": 0}, "model": {"pooling": "max"}})
    assert "3 invalid value(s)" in message
    for key in ("training.batch_size", "training.epochs", "model.pooling"):
        assert key in message


@pytest.mark.parametrize("raw", [[], [1, 2], "config", 3, None])
def test_top_level_must_be_an_object(raw):
    message = error_message(raw)
    assert "top level must be a JSON object" in message
    assert type(raw).__name__ in message


# --- partial configs and derived values --------------------------------------------------------------


def test_partial_config_keeps_defaults_for_the_rest():
    defaults = Config()
    config = config_from_dict({"training": {"epochs": 1}})
    assert config.training.epochs == 1
    assert defaults.training.epochs != 1
    assert config.training.batch_size == defaults.training.batch_size
    assert config.training.learning_rate == defaults.training.learning_rate
    assert config.model == defaults.model
    assert config.data == defaults.data
    assert config.seed == defaults.seed


def test_partial_nested_config_keeps_sibling_defaults():
    config = config_from_dict({"data": {"columns": {"train": {"text_column": "sentence"}}}})
    assert config.data.columns.train.text_column == "sentence"
    assert config.data.columns.train.label_column is None
    assert config.data.columns.val.text_column is None
    assert config.data.text_column == Config().data.text_column


@pytest.mark.parametrize(("batch_size", "accumulation", "expected"), [(1, 8, 8), (4, 2, 8), (3, 5, 15), (16, 1, 16)])
def test_effective_batch_size(batch_size, accumulation, expected):
    config = config_from_dict({"training": {"batch_size": batch_size, "gradient_accumulation_steps": accumulation}})
    assert config.effective_batch_size() == expected


def test_default_effective_batch_size():
    assert Config().effective_batch_size() == Config().training.batch_size * Config().training.gradient_accumulation_steps


def test_fingerprint_is_stable_for_equal_configs():
    first = config_from_dict({"training": {"epochs": 2}})
    second = config_from_dict({"training": {"epochs": 2}})
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint() == first.fingerprint()
    # the shipped file spells out the defaults; same effective config -> same fingerprint
    assert load_config(DEFAULT_CONFIG).fingerprint() == Config().fingerprint()
    assert len(first.fingerprint()) == 64
    int(first.fingerprint(), 16)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"training": {"epochs": 4}},
        {"training": {"learning_rate": 0.002}},
        {"model": {"dropout": 0.2}},
        {"data": {"val_file": None}},
        {"data": {"columns": {"test": {"label_column": "y"}}}},
    ],
)
def test_fingerprint_changes_when_one_value_changes(change):
    assert config_from_dict(change).fingerprint() != Config().fingerprint()


# --- load_config errors ------------------------------------------------------------------------------


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(UserInputError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "not found" in message


def test_load_config_directory(tmp_path):
    with pytest.raises(UserInputError) as excinfo:
        load_config(tmp_path)
    message = str(excinfo.value)
    assert str(tmp_path) in message
    assert "directory" in message


def test_load_config_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "seed": 1,\n  oops\n}\n', encoding="utf-8")
    with pytest.raises(UserInputError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "line 3" in message
    assert "column 3" in message


def test_load_config_json_list_at_top_level(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('[{"seed": 1}]', encoding="utf-8")
    with pytest.raises(UserInputError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "top level must be a JSON object" in message
    assert "list" in message


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"model": {"backbone": "caf\xe9"}}')
    with pytest.raises(UserInputError, match="not UTF-8"):
        load_config(path)


def test_load_config_error_names_the_file(tmp_path):
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"training": {"batch_sise": 2}}), encoding="utf-8")
    with pytest.raises(UserInputError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}:")
    assert "did you mean 'training.batch_size'" in message


def test_load_config_partial_file(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"training": {"epochs": 1}}), encoding="utf-8")
    config = load_config(path)
    assert config.training.epochs == 1
    assert config.training.batch_size == Config().training.batch_size


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_train_with_unknown_key_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": {"epochs": 1, "batch_sise": 2}}), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-m", "finetune_pipeline.cli", "train", "--config", str(bad)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_BAD_INPUT == 2, result.stderr
    assert result.stderr.startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert "training.batch_sise" in result.stderr
    assert "did you mean 'training.batch_size'" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.json"]


def test_the_installed_console_script_runs_and_reports_bad_input(tmp_path):
    finetune = Path(sys.executable).parent / "finetune"
    if not finetune.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable} (pip install -e . makes it)")
    bad = tmp_path / "bad.json"
    bad.write_text('{"training": {"epochz": 1}}', encoding="utf-8")
    result = subprocess.run([str(finetune), "train", "--config", str(bad)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'training.epochs'" in result.stderr and "Traceback" not in result.stderr


def test_the_readme_key_table_is_the_schemas():
    """Defaults and knob descriptions live in config.py only: the README's table is generated from it."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert key_table() in readme, ("README.md's key table differs from the schema; regenerate it with\n"
                                   "python -c 'from finetune_pipeline.core.config import key_table; print(key_table())'")
    documented = set(re.findall(r"^\| `([a-z_.{},]+)` \|", key_table(), flags=re.MULTILINE))
    leaves = {key for key in flatten(Config().to_plain()) if ".columns." not in key and ".formats." not in key}
    assert leaves <= documented  # every knob has its row
