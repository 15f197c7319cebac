"""torchrun: two CPU processes (gloo) train the same run as one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from finetune_pipeline.runs import artifacts
from finetune_pipeline.runtime import files
from tests.conftest import REPO_ROOT, deep_merge, toy_rows, write_csv

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")


def train(config: dict, work: Path, processes: int) -> Path:
    config_path = work / f"config-{processes}.json"
    config_path.write_text(json.dumps(config))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    result = subprocess.run([*launcher, "-m", "finetune_pipeline.cli", "train", "--config", str(config_path)],
                            capture_output=True, text=True, cwd=work,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run_folders = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("run folder: ")]
    assert len(run_folders) == 1, result.stdout  # rank 0 alone reports (and writes)
    return Path(run_folders[0])


@pytest.mark.parametrize("training", [{"freeze_backbone": True}, {"freeze_backbone": False},
                                      {"freeze_backbone": False, "train_top_layers": 1}],
                         ids=["frozen-cached", "full", "top-layers-cached"])
def test_two_processes_train_the_run_of_one_with_the_same_global_batch(make_config, tmp_path, training):
    # 49 texts: the epoch's last step holds one example, so the second process pads with a zero-weight one
    train_file = write_csv(tmp_path / "train49.csv", toy_rows(49, seed=1))
    base = make_config(data={"train_file": str(train_file)},
                       training={**training, "epochs": 2, "log_every_steps": 1}).to_plain()
    freeze = training["freeze_backbone"]
    single = train(deep_merge(base, {"training": {"batch_size": 4, "gradient_accumulation_steps": 2}}), tmp_path, 1)
    double = train(deep_merge(base, {"training": {"batch_size": 2, "gradient_accumulation_steps": 2}}), tmp_path, 2)

    one, two = (json.loads((run / artifacts.METRICS_FILE).read_text()) for run in (single, double))
    assert two["processes"] == 2 and two["effective_batch_size"] == one["effective_batch_size"] == 8
    assert two["optimizer_steps"] == one["optimizer_steps"] == 2 * 7
    # Tolerance: the gradient is summed in another order across processes, so float32 rounding differs.
    for epoch_one, epoch_two in zip(one["history"], two["history"], strict=True):
        assert epoch_two["train_loss"] == pytest.approx(epoch_one["train_loss"], rel=1e-5)
    for key in ("best_val_score", "best_epoch", "test_score"):
        assert two[key] == one[key], key
    for split in ("val_metrics", "test_metrics"):  # every example evaluated exactly once
        assert sum(entry["support"] for entry in two[split]["per_class"].values()) == 16
        assert two[split]["confusion_matrix"] == one[split]["confusion_matrix"]
    weights_one, weights_two = (files.load_checkpoint(run / artifacts.FINAL_MODEL_FILE)["model_state"]
                                for run in (single, double))
    assert weights_one.keys() == weights_two.keys()
    assert all(torch.allclose(weights_one[name], weights_two[name], atol=1e-5) for name in weights_one)
    proof = json.loads((double / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["consistent_with_config"] is True and proof["backbone_changed"] is (not freeze)
    assert len(list(double.parent.iterdir())) == 2  # one run folder per run: the second process wrote nothing


@pytest.mark.parametrize("arguments", [["sweep", "A"], ["train", "--resume"]])
def test_what_torchrun_does_not_run_yet_is_refused_with_exit_2(monkeypatch, capsys, arguments):
    from finetune_pipeline import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert "under torchrun is not supported yet" in error and "Traceback" not in error


# Run as each process of a two-process run: one process fails, in a way only it can.
FAILING_PROCESS = """
import sys
from pathlib import Path

from finetune_pipeline import cli
from finetune_pipeline.core import training
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runtime import distributed, files

failing_rank = int(sys.argv.pop(1))
real_save_torch, real_evaluate = files.save_torch, training.evaluate


def save_torch(path, payload):  # rank 0 writes; it fails on the first best model, at the end of epoch 1
    if distributed.world().rank == 0 and Path(path).name == artifacts.BEST_MODEL_FILE:
        raise OSError("disk full (injected on rank 0)")
    real_save_torch(path, payload)


def evaluate(*args, **kwargs):  # every process validates; rank 1 fails in epoch 1's validation
    if distributed.world().rank == 1:
        raise RuntimeError("out of luck (injected on rank 1)")
    return real_evaluate(*args, **kwargs)


if failing_rank == 0:
    files.save_torch = save_torch
else:
    training.evaluate = evaluate
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_failure_in_one_process_ends_both_with_its_message(make_config, tmp_path, failing_rank):
    """The other process is left waiting in a collective (the gradient sum, or validation's gather) for one that
    failed: both must exit with an error, promptly, and the failure's message must be printed. Started without
    torchrun, whose agent would stop the survivor anyway: this checks the processes themselves."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(make_config(training={"epochs": 3}).to_plain()))
    (tmp_path / "failing_process.py").write_text(FAILING_PROCESS)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes, logs = [], []
    for rank in (0, 1):
        logs.append((tmp_path / f"rank{rank}.log").open("w+"))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        processes.append(subprocess.Popen(
            [sys.executable, str(tmp_path / "failing_process.py"), str(failing_rank), "train", "--config",
             str(config_path)], stdout=logs[-1], stderr=subprocess.STDOUT, cwd=tmp_path, env=env))
    exited: dict[int, float] = {}
    deadline = time.monotonic() + 180
    try:
        while len(exited) < 2 and time.monotonic() < deadline:
            exited |= {rank: time.monotonic() for rank, process in enumerate(processes)
                       if rank not in exited and process.poll() is not None}
            time.sleep(0.1)
    finally:
        for process in processes:
            process.kill()  # no-op for a process that exited
            process.wait()
    output = [log.seek(0) or log.read() for log in logs]
    assert len(exited) == 2, f"a process hung: {output[1 - failing_rank][-2000:]}"
    assert all(process.returncode not in (0, None) for process in processes), output
    assert max(exited.values()) - min(exited.values()) < 30, "the other process outlived the failed one"
    message = "disk full (injected on rank 0)" if failing_rank == 0 else "out of luck (injected on rank 1)"
    assert message in output[failing_rank]
    (run_dir,) = (tmp_path / "artifacts").iterdir()  # rank 0 recorded the failure: its own, or the other's
    metrics = json.loads((run_dir / artifacts.METRICS_FILE).read_text())
    assert metrics["status"] == "failed"
    if failing_rank == 0:
        assert message in metrics["error"]
