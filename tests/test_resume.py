"""Interruption and resume: a stopped run continues bit for bit, and a killed one loses no file."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_pipeline import cli
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.experiments.compare import compare_runs
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runs.artifacts import RESUME_FILE
from finetune_pipeline.runs.resume import RESUME_FORMAT_VERSION
from finetune_pipeline.runs.run import resume_training, run_training
from finetune_pipeline.runtime import faults, files
from finetune_pipeline.runtime.interruption import Interrupted
from tests.conftest import REPO_ROOT

# Everything a run's outcome is; times and resume bookkeeping are not.
OUTCOME_KEYS = ("best_val_score", "best_epoch", "test_score", "val_metrics", "test_metrics", "optimizer_steps",
                "stopped_early")


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.METRICS_FILE).read_text())


def outcome_of(run_dir: Path) -> dict:
    metrics = metrics_of(run_dir)
    history = [{key: value for key, value in epoch.items() if "time" not in key} for epoch in metrics["history"]]
    return {**{key: metrics[key] for key in OUTCOME_KEYS}, "history": history}


def step_losses(run_dir: Path) -> list[tuple[str, str]]:
    """(step, loss) of every logged step, the last logging of each step winning (a resumed run repeats some)."""
    from finetune_pipeline.runtime.run_log import read_events

    by_step = {event["step"]: event["loss"] for event in read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")}
    return sorted(by_step.items(), key=lambda item: int(item[0]))


FROZEN = {"freeze_backbone": True, "epochs": 3, "log_every_steps": 1, "batch_size": 2, "gradient_accumulation_steps": 2}
FULL = {"freeze_backbone": False, "epochs": 2, "log_every_steps": 1, "batch_size": 4, "gradient_accumulation_steps": 2}
TOP_LAYERS = {**FULL, "train_top_layers": 1}  # the top layer trains on cached hidden states


@pytest.fixture(autouse=True)
def no_leftover_fault(monkeypatch):
    monkeypatch.delenv(faults.FAULT_VARIABLE, raising=False)
    faults._passes.clear()


def interrupt_at(monkeypatch, point: str, count: int) -> None:
    """Ctrl-C (SIGINT to this process) the count-th time the run passes point."""
    faults._passes.clear()
    monkeypatch.setenv(faults.FAULT_VARIABLE, f"{point}:{count}:SIGINT")


def interrupted_run(monkeypatch, config, point: str, count: int) -> Path:
    """Run config until a Ctrl-C the count-th time it passes point; the folder of that stopped run."""
    interrupt_at(monkeypatch, point, count)
    with pytest.raises(Interrupted):
        run_training(config)
    monkeypatch.delenv(faults.FAULT_VARIABLE)
    return max(Path(config.output.artifacts_root).iterdir(), key=lambda path: path.name)


@pytest.mark.parametrize(("training", "point", "count"), [
    (FROZEN, "micro_batch", 9),  # mid-epoch, mid optimizer step (cached features)
    (FROZEN, "epoch_end", 1),  # between epochs: validated, epoch files not yet written
    (FULL, "step", 5),  # mid-epoch, the whole model training (no cache)
    (FULL, "epoch_end", 1),
    (TOP_LAYERS, "step", 5),
])
def test_an_interrupted_and_resumed_run_ends_bit_for_bit_as_an_uninterrupted_one(
        make_config, monkeypatch, training, point, count):
    config = make_config(training=training, output={"checkpoint_every_steps": 2})
    uninterrupted = run_training(config)

    stopped = interrupted_run(monkeypatch, config, point, count)
    assert metrics_of(stopped)["status"] == "interrupted"
    assert (stopped / artifacts.FINAL_MODEL_FILE).is_file() and (stopped / RESUME_FILE).is_file()
    assert files.load_checkpoint(stopped / artifacts.FINAL_MODEL_FILE)["step"] == metrics_of(stopped)["optimizer_steps"]

    resumed = resume_training(stopped)
    assert resumed == stopped
    assert metrics_of(resumed)["status"] == "completed"
    assert outcome_of(resumed) == outcome_of(uninterrupted)
    assert step_losses(resumed) == step_losses(uninterrupted)
    for file_name in (artifacts.BEST_MODEL_FILE, artifacts.FINAL_MODEL_FILE):
        expected = files.load_checkpoint(uninterrupted / file_name)["model_state"]
        got = files.load_checkpoint(resumed / file_name)["model_state"]
        assert all(torch.equal(expected[name], got[name]) for name in expected), file_name
    assert not (resumed / RESUME_FILE).exists()  # a completed run keeps no resume checkpoint
    resume_events = [line for line in (resumed / artifacts.TRAIN_LOG_FILE).read_text().splitlines()
                     if "event=resume " in line]
    assert len(resume_events) == 1


def test_a_completed_run_a_changed_config_or_changed_data_are_not_resumed(make_config, monkeypatch):
    config = make_config(output={"checkpoint_every_steps": 1})
    completed = run_training(config)
    with pytest.raises(UserInputError, match=f"completed.*A new run with its config: finetune train --from-run "
                                             f"{completed}$"):
        resume_training(completed)

    stopped = interrupted_run(monkeypatch, config, "step", 3)

    config_file = stopped / artifacts.CONFIG_FILE
    original = config_file.read_text()
    config_file.write_text(original.replace('"hidden_dim": 16', '"hidden_dim": 17'))
    with pytest.raises(UserInputError, match=f"config.json was changed.*finetune train --from-run {stopped}$"):
        resume_training(stopped)
    config_file.write_text(original)

    train_file = Path(config.data.train_file)
    rows = train_file.read_text()
    train_file.write_text(rows + "one more good text,pos\n")
    with pytest.raises(UserInputError, match="the train data changed since the run started"):
        resume_training(stopped)
    # the same rows in other bytes (Windows line ends) are the same data: the run goes on
    train_file.write_bytes(rows.replace("\n", "\r\n").encode())
    assert metrics_of(resume_training(stopped))["status"] == "completed"


def test_other_code_is_refused_unless_forced(make_config, monkeypatch):
    config = make_config(output={"checkpoint_every_steps": 1})
    stopped = interrupted_run(monkeypatch, config, "step", 2)
    metrics = metrics_of(stopped)
    metrics["code_version"]["source_sha256"] = "0" * 64
    files.write_json(stopped / artifacts.METRICS_FILE, metrics)
    with pytest.raises(UserInputError, match="--force"):
        resume_training(stopped)
    assert metrics_of(resume_training(stopped, force=True))["status"] == "completed"


def test_a_resume_checkpoint_of_another_format_is_refused(make_config, monkeypatch):
    config = make_config(output={"checkpoint_every_steps": 1})
    stopped = interrupted_run(monkeypatch, config, "step", 2)
    checkpoint = files.load_checkpoint(stopped / RESUME_FILE)
    assert checkpoint["format_version"] == RESUME_FORMAT_VERSION
    files.save_torch(stopped / RESUME_FILE, {**checkpoint, "format_version": RESUME_FORMAT_VERSION - 1})
    with pytest.raises(UserInputError, match="written by another version of this package; start the run again"):
        resume_training(stopped)


def test_resume_without_a_folder_takes_the_newest_unfinished_run(make_config, monkeypatch, tmp_path, capsys):
    config = make_config(output={"checkpoint_every_steps": 1})
    config_path = tmp_path / "resume-config.json"
    config_path.write_text(json.dumps(config.to_plain()))
    completed = run_training(config)
    stopped = interrupted_run(monkeypatch, config, "step", 3)
    assert stopped != completed
    assert cli.main(["train", "--config", str(config_path), "--resume"]) == 0
    assert metrics_of(stopped)["status"] == "completed"
    assert cli.main(["train", "--config", str(config_path), "--resume", str(completed)]) == 2
    error = capsys.readouterr().err
    assert "this run completed" in error and "Traceback" not in error
    assert cli.main(["train", "--config", str(config_path), "--resume"]) == 2
    assert "no unfinished run" in capsys.readouterr().err


def test_sigterm_stops_the_run_like_ctrl_c_with_exit_143(make_config, tmp_path):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(make_config(training={"epochs": 3}).to_plain()))
    result = subprocess.run(
        [sys.executable, "-m", "finetune_pipeline.cli", "train", "--config", str(config_path)],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), faults.FAULT_VARIABLE: "step:4:SIGTERM"},
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    run_dir = next((tmp_path / "artifacts").iterdir())
    # the advice names this very run folder
    assert "Traceback" not in result.stderr and f"continue it with `finetune train --resume {run_dir}`" in result.stderr
    metrics = metrics_of(run_dir)
    assert metrics["status"] == "interrupted" and metrics["optimizer_steps"] == 4
    assert not (run_dir / artifacts.LOCK_FILE).exists()


# ---- Fault injection: SIGKILL at seeded points, then every file is whole and --resume finishes the run ----

# How often a run of the config below passes each point: 48 train texts in 6 fused steps an epoch, 80 texts
# in 10 extraction batches, about 25 atomic writes; resume.pt after steps 4, 6 (epoch end), 8 and 12.
FAULT_POINTS = {"micro_batch": 12, "step": 12, "epoch_end": 2, "write": 20, "extraction": 10,
                "write_resume.pt": 4, "write_best_model.pt": 1, "write_metrics.json": 4}


def kill_points(seed: int = 12, count: int = 16) -> list[tuple[str, int]]:
    """count distinct (point, pass) pairs drawn with a fixed seed; every kind of point at least once."""
    rng = random.Random(seed)
    chosen = {(point, rng.randint(1, passes)) for point, passes in FAULT_POINTS.items()}
    while len(chosen) < count:
        point = rng.choice(sorted(FAULT_POINTS))
        chosen.add((point, rng.randint(1, FAULT_POINTS[point])))
    return sorted(chosen)


def run_cli(config_path: Path, *arguments: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(faults.FAULT_VARIABLE, None)
    if fault:
        env[faults.FAULT_VARIABLE] = fault
    return subprocess.run([sys.executable, "-m", "finetune_pipeline.cli", "train", "--config", str(config_path),
                           *arguments], capture_output=True, text=True, cwd=config_path.parent, env=env)


def assert_every_file_is_whole(run_dir: Path, temporaries_allowed: bool) -> None:
    """Every artifact parses or loads; a SIGKILL during a write can leave only its hidden temporary file."""
    for path in run_dir.iterdir():
        if path.name.endswith(".tmp"):
            assert temporaries_allowed and path.name.startswith("."), f"{path.name}: left behind"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)


def test_sigkill_at_seeded_points_loses_no_file_and_resume_finishes_the_same_run(make_config, tmp_path, caplog):
    # extraction batches of 8, a resume checkpoint every 4 steps (mid-epoch) and at each epoch end
    config = make_config(training={"epochs": 2, "eval_batch_size": 8, "log_every_steps": 1},
                         output={"checkpoint_every_steps": 4})
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.to_plain()))
    reference = run_cli(config_path)
    assert reference.returncode == 0, reference.stderr
    artifacts_root = Path(config.output.artifacts_root)
    reference_dir = max(artifacts_root.iterdir(), key=lambda path: path.name)
    points = kill_points()
    assert len(points) >= 10
    resumed_runs = 0
    for point, count in points:
        for entry in Path(config.output.cache_dir).glob("features-*"):
            entry.unlink()  # every killed run starts cold, so extraction can be killed too
        before = set(artifacts_root.iterdir())
        killed = run_cli(config_path, fault=f"{point}:{count}")
        assert killed.returncode == -signal.SIGKILL, (point, count, killed.stderr)
        new_folders = set(artifacts_root.iterdir()) - before
        if not new_folders:
            continue  # killed while checking the inputs, before the run folder existed: nothing to lose
        (run_dir,) = new_folders
        assert_every_file_is_whole(run_dir, temporaries_allowed=True)
        if not (run_dir / artifacts.METRICS_FILE).exists():
            continue  # killed before the run's first file: nothing to resume, nothing lost
        assert run_lock.run_status(run_dir) == "crashed", (point, count)
        assert compare_runs([run_dir], tmp_path / "compare").rows[0].status == "crashed"
        caplog.clear()
        assert resume_training(run_dir) == run_dir  # in this process: only the kills need one of their own
        assert any("event=resuming" in message and "status=crashed" in message for message in caplog.messages)
        assert_every_file_is_whole(run_dir, temporaries_allowed=False)
        assert outcome_of(run_dir) == outcome_of(reference_dir), (point, count)
        resumed_runs += 1
    assert resumed_runs >= 10
