"""The experiment loop: --set overrides, new-experiment, sweeps, and stopping on a non-finite loss."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.nn.functional

from finetune_pipeline import cli
from finetune_pipeline.core import task
from finetune_pipeline.core.config import (
    Config,
    load_config,
    non_default_values,
    parse_override,
    parse_overrides,
    write_new_experiment,
)
from finetune_pipeline.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, UserInputError
from finetune_pipeline.experiments.sweep import PRESETS_DIR, load_sweep, resolve_sweep_file, run_sweep
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import files, run_log
from tests.conftest import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "finetune_pipeline" / "configs" / "train_config.json"


# --- --set ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("assignment, expected", [
    ("training.batch_size=4", ("training.batch_size", 4)),
    ("training.learning_rate=1e-4", ("training.learning_rate", 1e-4)),
    ("training.freeze_backbone=false", ("training.freeze_backbone", False)),
    ("data.val_file=null", ("data.val_file", None)),
    ("training.mixed_precision=bf16", ("training.mixed_precision", "bf16")),  # not JSON: taken as text
    ('model.backbone="my/model"', ("model.backbone", "my/model")),
    ("data.train_file=a=b.csv", ("data.train_file", "a=b.csv")),  # only the first '=' separates
    (" seed = 7", ("seed", 7)),
])
def test_set_values_are_json_where_they_parse_and_text_otherwise(assignment, expected):
    assert parse_override(assignment) == expected


@pytest.mark.parametrize("assignment", ["training.batch_size", "=4", ""])
def test_set_without_key_or_equals_sign_is_an_error(assignment):
    with pytest.raises(UserInputError, match="expected KEY=VALUE"):
        parse_override(assignment)


def test_set_overrides_the_file_and_is_validated_like_it():
    config = load_config(DEFAULT_CONFIG, parse_overrides(["training.batch_size=4", "data.max_length=384",
                                                           "training.batch_size=2"]))
    assert (config.training.batch_size, config.data.max_length) == (2, 384)  # the last --set of a key wins
    assert config.model == Config().model
    with pytest.raises(UserInputError, match="did you mean 'training.batch_size'"):
        load_config(DEFAULT_CONFIG, parse_overrides(["training.batchsize=4"]))
    with pytest.raises(UserInputError, match="did you mean 'model.dropout'"):
        load_config(DEFAULT_CONFIG, parse_overrides(["training.dropout=0.2"]))
    with pytest.raises(UserInputError, match=r"training.batch_size.*valid integer"):
        load_config(DEFAULT_CONFIG, parse_overrides(["training.batch_size=four"]))
    with pytest.raises(UserInputError, match="holds a value, not a section"):
        load_config(DEFAULT_CONFIG, parse_overrides(["seed.value=1"]))


def test_train_script_rejects_a_bad_set_with_exit_2_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "finetune_pipeline/scripts/train.py", "--set", "training.epoch=2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert "did you mean 'training.epochs'" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_records_the_effective_config_and_which_keys_came_from_set(make_config):
    overrides = {"training.epochs": 1, "model.hidden_dim": 8}
    config = make_config(training={"epochs": 1}, model={"hidden_dim": 8})
    run_dir = run_training(config, origin={"config_file": "x.json", "overrides": overrides})
    metrics = json.loads((run_dir / artifacts.METRICS_FILE).read_text())
    assert metrics["overrides"] == overrides and metrics["config_file"] == "x.json"
    assert json.loads((run_dir / artifacts.CONFIG_FILE).read_text())["model"]["hidden_dim"] == 8
    assert set(metrics["data_files"]) == {"train", "val", "test"}
    assert len(metrics["data_files"]["train"]["sha256"]) == 64
    assert {"package", "source_sha256", "git_commit", "git_dirty"} <= set(metrics["code_version"])


def test_the_source_hash_changes_with_any_python_file_of_the_package(tmp_path):
    from finetune_pipeline.runs.provenance import source_sha256

    (tmp_path / "configs").mkdir()
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "configs" / "c.json").write_text("{}")
    before = source_sha256(tmp_path)
    (tmp_path / "configs" / "c.json").write_text('{"seed": 1}')
    assert source_sha256(tmp_path) == before  # configs are recorded per run, not code
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_sha256(tmp_path) != before


# --- new-experiment ---------------------------------------------------------------------------------


def test_new_experiment_holds_only_non_default_keys_and_reports_the_diff(tmp_path):
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"model": {"hidden_dim": 512}, "training": {"epochs": 2}}))
    path, changes = write_new_experiment(tmp_path, "exp2", source, {"model.dropout": 0.3, "training.epochs": 3})
    assert path == tmp_path / "exp2.json"
    # epochs 3 is the default again, so the file does not need it; hidden_dim comes from the source
    assert json.loads(path.read_text()) == {"model": {"hidden_dim": 512, "dropout": 0.3}}
    assert changes == {"model.dropout": (0.1, 0.3), "training.epochs": (2, 3)}
    assert load_config(path) == load_config(source, {"model.dropout": 0.3, "training.epochs": 3})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_new_experiment_never_overwrites_and_validates(tmp_path):
    write_new_experiment(tmp_path, "exp2", DEFAULT_CONFIG, {"model.dropout": 0.2})
    before = (tmp_path / "exp2.json").read_text()
    with pytest.raises(UserInputError, match="exists already"):
        write_new_experiment(tmp_path, "exp2", DEFAULT_CONFIG, {"model.dropout": 0.3})
    assert (tmp_path / "exp2.json").read_text() == before
    with pytest.raises(UserInputError, match="did you mean 'model.dropout'"):
        write_new_experiment(tmp_path, "exp3", DEFAULT_CONFIG, {"model.dropuot": 0.3})
    with pytest.raises(UserInputError, match="letters, digits"):
        write_new_experiment(tmp_path, "../escape", DEFAULT_CONFIG, {})
    assert not (tmp_path / "exp3.json").exists()


def test_non_default_values_of_the_defaults_is_empty():
    assert non_default_values(Config()) == {}


# --- presets and sweeps -----------------------------------------------------------------------------


def test_presets_expand_as_the_guide_describes():
    members = {name: load_sweep(resolve_sweep_file(name), None, {}).members for name in "ABCD"}
    assert [m.overrides for m in members["A"]] == [{}]
    assert [m.overrides for m in members["B"]] == [{"data.max_length": n} for n in (256, 384, 512)]
    assert len(members["C"]) == 9
    assert {(m.overrides["model.hidden_dim"], m.overrides["model.dropout"]) for m in members["C"]} == {
        (h, d) for h in (128, 256, 512) for d in (0.1, 0.2, 0.3)}
    assert [m.overrides["training.encoder_learning_rate"] for m in members["D"]] == [2e-6, 5e-6, 1e-5]
    d_base = load_sweep(PRESETS_DIR / "D.json", None, {}).base_config["training"]
    assert d_base["freeze_backbone"] is False
    assert d_base["batch_size"] * d_base["gradient_accumulation_steps"] == Config().effective_batch_size()
    assert all(m.seed == 42 for group in members.values() for m in group)


def test_seeds_multiply_members_and_set_cannot_touch_a_swept_key():
    sweep = load_sweep(PRESETS_DIR / "C.json", [1, 2], {"training.epochs": 1})
    assert len(sweep.members) == 18 and [m.seed for m in sweep.members[:10]] == [1] * 9 + [2]
    assert sweep.base_config["training"]["epochs"] == 1
    with pytest.raises(UserInputError, match="varies these keys"):
        load_sweep(PRESETS_DIR / "C.json", None, {"model.dropout": 0.5})


def write_sweep(tmp_path: Path, base: Config, members: list[dict]) -> Path:
    base_path = tmp_path / "base.json"
    base_path.write_text(json.dumps(base.to_plain()))
    sweep_path = tmp_path / "tiny_sweep.json"
    sweep_path.write_text(json.dumps({"description": "test", "base": "base.json", "members": members}))
    return sweep_path


def test_sweep_continues_past_failing_members_and_records_them(make_config, tmp_path):
    base = make_config(training={"epochs": 1})
    sweep_path = write_sweep(tmp_path, base, [
        {"name": "ok-16", "set": {"model.hidden_dim": 16}},
        {"name": "too-long", "set": {"data.max_length": 128}},  # the tiny BERT reads 64 tokens at most
        {"name": "bad-value", "set": {"training.batch_size": 0}},
        {"name": "ok-8", "set": {"model.hidden_dim": 8}},
    ])
    sweep = load_sweep(sweep_path, None, {})
    sweep_dir = run_sweep(sweep)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    statuses = {member["name"]: member["status"] for member in record["members"]}
    assert statuses == {"ok-16": "completed", "too-long": "failed", "bad-value": "failed", "ok-8": "completed"}
    errors = {member["name"]: member["error"] for member in record["members"]}
    assert "data.max_length" in errors["too-long"] and "training.batch_size" in errors["bad-value"]
    completed = [member for member in record["members"] if member["status"] == "completed"]
    for member in completed:
        metrics = json.loads((Path(member["run_dir"]) / artifacts.METRICS_FILE).read_text())
        assert metrics["status"] == "completed" and metrics["sweep_member"] == member["name"]
        assert metrics["sweep"] == str(sweep_dir)
    hidden_dims = [json.loads((Path(m["run_dir"]) / "config.json").read_text())["model"]["hidden_dim"] for m in completed]
    assert hidden_dims == [16, 8]


def test_sweep_members_start_from_pristine_backbones(make_config, tmp_path):
    """In one process the backbone is loaded once; a member that trains it must not leak into the next."""
    base = make_config(training={"epochs": 1, "freeze_backbone": False, "encoder_learning_rate": 0.01})
    sweep = load_sweep(write_sweep(tmp_path, base, [{"name": "first", "set": {}}, {"name": "second", "set": {}}]),
                       None, {})
    run_sweep(sweep)
    states = [files.load_checkpoint(Path(m.run_dir) / artifacts.FINAL_MODEL_FILE)["model_state"]
              for m in sweep.members]
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])  # same start, same result


# --- non-finite loss --------------------------------------------------------------------------------


def test_a_nan_loss_stops_the_run_naming_the_step(make_config, monkeypatch, capsys):
    calls = {"count": 0}
    real_cross_entropy = torch.nn.functional.cross_entropy

    def cross_entropy_that_breaks(*args, **kwargs):
        calls["count"] += 1
        loss = real_cross_entropy(*args, **kwargs)
        return loss * float("nan") if calls["count"] >= 3 else loss  # one pass per step on cached features

    monkeypatch.setattr(task.F, "cross_entropy", cross_entropy_that_breaks)
    config = make_config(training={"epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 2})
    exit_code = cli.run_command(lambda: run_training(config))
    assert exit_code == EXIT_DIVERGED
    message = capsys.readouterr().err
    assert "optimizer step 3 (epoch 1)" in message and "training.learning_rate=0.01" in message
    run_dir = next(Path(config.output.artifacts_root).iterdir())
    metrics = json.loads((run_dir / artifacts.METRICS_FILE).read_text())
    assert metrics["status"] == "failed" and "NaN" in metrics["error"]
    # the bad step is in train.log, so that compare and curves.png show the divergence
    last_step = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")[-1]
    assert last_step["step"] == "3" and last_step["loss"] == "nan"


def test_new_experiment_outside_the_repository_root_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new-experiment", "exp2", "--from", str(DEFAULT_CONFIG), "--set", "model.dropout=0.2"]) == 2
    assert "run new-experiment from the repository root" in capsys.readouterr().err


# --- rerunning a run: --from-run ---------------------------------------------------------------------


def test_following_compares_seed_advice_reruns_the_compared_runs_with_their_own_configs(make_config, tmp_path,
                                                                                       monkeypatch, capsys):
    """compare's advice is a command; running it reruns exactly the runs being compared (their data, their
    overrides), with the seeds they lack, and the comparison then has seed groups on that data."""
    from finetune_pipeline.experiments.compare import compare_runs

    base = make_config(training={"epochs": 1})
    reference = run_training(base)
    variant = run_training(make_config(training={"epochs": 1}, model={"dropout": 0.3}))
    [advice] = [note for note in compare_runs([reference, variant], tmp_path / "c1").notes
                if note.startswith("seed noise is unknown")]
    command = advice.split("`")[1]
    assert command == f"finetune sweep --from-run {reference} --from-run {variant} --seeds 8,9"  # base seed is 7
    assert cli.main(command.split()[1:]) == 0
    sweep_dir = Path(capsys.readouterr().out.split("sweep folder: ")[1].split(" (")[0])
    members = json.loads((sweep_dir / "sweep.json").read_text())["members"]
    assert [(m["name"], m["seed"], m["status"]) for m in members] == [
        (reference.name, 8, "completed"), (variant.name, 8, "completed"),
        (reference.name, 9, "completed"), (variant.name, 9, "completed")]
    configs = [json.loads((Path(m["run_dir"]) / "config.json").read_text()) for m in members]
    assert [config["model"]["dropout"] for config in configs] == [0.0, 0.3, 0.0, 0.3]
    assert {config["data"]["train_file"] for config in configs} == {base.data.train_file}
    comparison = compare_runs([reference, variant, *(Path(m["run_dir"]) for m in members)], tmp_path / "c2")
    assert [group.seeds for group in comparison.groups] == [[7, 8, 9], [7, 8, 9]]
    assert not any(note.startswith("seed noise is unknown") for note in comparison.notes)


def test_train_from_run_trains_again_with_that_runs_config_and_changes(make_config, tmp_path, monkeypatch, capsys):
    first = run_training(make_config(training={"epochs": 1}, model={"dropout": 0.2}))
    assert cli.main(["train", "--from-run", str(first), "--set", "seed=11"]) == 0
    second = Path(capsys.readouterr().out.split("run folder: ")[1].strip())
    config = json.loads((second / "config.json").read_text())
    assert (config["model"]["dropout"], config["seed"], config["training"]["epochs"]) == (0.2, 11, 1)
    metrics = json.loads((second / artifacts.METRICS_FILE).read_text())
    assert metrics["config_file"] == str(first / "config.json") and metrics["overrides"] == {"seed": 11}
    assert cli.main(["train", "--from-run", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "no config.json there" in capsys.readouterr().err
    assert cli.main(["train", "--from-run", str(first), "--config", "x.json"]) == EXIT_BAD_INPUT


def test_sweep_needs_a_preset_or_runs_but_not_both(capsys):
    assert cli.main(["sweep"]) == EXIT_BAD_INPUT
    assert cli.main(["sweep", "A", "--from-run", "somewhere"]) == EXIT_BAD_INPUT
    assert "one of the two" in capsys.readouterr().err


def test_a_from_run_sweep_with_set_names_its_members_by_the_change(make_config, tmp_path):
    from finetune_pipeline.experiments.sweep import sweep_from_runs

    base = run_training(make_config(training={"epochs": 1}))
    sweep = sweep_from_runs([base], [7, 8], {"training.learning_rate": 0.003})
    assert [(member.name, member.seed, member.overrides) for member in sweep.members] == [
        (f"{base.name} with learning_rate=0.003", 7, {}), (f"{base.name} with learning_rate=0.003", 8, {})]
    assert sweep.base_config["training"]["learning_rate"] == 0.003
    assert [member.seed for member in sweep_from_runs([base], None, {}).members] == [7]  # no seeds: the run's own


def test_one_member_of_a_preset_runs_alone_and_an_unknown_name_lists_the_members(capsys):
    from finetune_pipeline import cli
    from finetune_pipeline.errors import UserInputError
    from finetune_pipeline.experiments.sweep import plan_sweep

    how = ("finetune sweep A", "finetune sweep --from-run RUN_DIR")
    sweep = plan_sweep("C", [], [42, 43], {}, how, ["hidden_dim=128,dropout=0.1"])
    assert [(member.name, member.overrides, member.seed) for member in sweep.members] == [
        ("hidden_dim=128,dropout=0.1", {"model.hidden_dim": 128, "model.dropout": 0.1}, seed) for seed in (42, 43)]
    with pytest.raises(UserInputError, match=r"no member 'dropout=0.1'; its members: hidden_dim=256,dropout=0.1, "):
        plan_sweep("C", [], None, {}, how, ["dropout=0.1"])
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    assert "a preset (A, B, C, D, E, F:" in " ".join(capsys.readouterr().out.split())
