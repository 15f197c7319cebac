"""Out-of-memory is found before training, explained, and leaves only a failed-run record."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_pipeline import cli
from finetune_pipeline.core import device
from finetune_pipeline.core.batching import TokenBatch
from finetune_pipeline.errors import EXIT_OUT_OF_MEMORY, OutOfMemory
from finetune_pipeline.runs import artifacts, memory_check
from finetune_pipeline.runs.preparation import prepare_run
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import files
from tests.conftest import REPO_ROOT


def test_preflight_uses_the_heaviest_batch_and_leaves_model_and_rng_untouched(make_config):
    config = make_config(training={"freeze_backbone": False, "batch_size": 3})
    prepared = prepare_run(config)
    weights = {name: tensor.clone() for name, tensor in prepared.model.state_dict().items()}
    rng = torch.get_rng_state()
    preflight = memory_check.run_preflight(prepared.model, prepared.tokenized["train"], config, prepared.placement,
                                           prepared.mode, prepared.task)
    assert preflight.examples == 3
    longest = max(prepared.tokenized["train"].lengths)
    assert preflight.padded_length == -(-longest // 8) * 8
    assert preflight.peak_mb > 0 and preflight.available_mb > preflight.peak_mb
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    assert preflight.optimizer_state_mb == pytest.approx(trainable * 8 / 2**20)
    assert all(torch.equal(weights[name], tensor) for name, tensor in prepared.model.state_dict().items())
    assert all(p.grad is None for p in prepared.model.parameters())
    assert torch.equal(rng, torch.get_rng_state())


def failing_logits(self, model):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_in_the_first_step_exits_3_with_the_knobs_and_a_failed_record(make_config, monkeypatch, capsys):
    monkeypatch.setattr(TokenBatch, "logits", failing_logits)
    config = make_config(training={"freeze_backbone": False, "batch_size": 4, "gradient_accumulation_steps": 2})
    assert cli.run_command(lambda: run_training(config)) == EXIT_OUT_OF_MEMORY == 3
    message = capsys.readouterr().err
    assert "out of memory in the preflight step" in message
    for knob in ("data.max_length", "training.batch_size", "training.gradient_accumulation_steps",
                 "effective batch of 8", "training.freeze_backbone", "training.mixed_precision",
                 "training.gradient_checkpointing"):
        assert knob in message, knob
    assert "Traceback" not in message
    (run_dir,) = Path(config.output.artifacts_root).iterdir()
    # a failed-run record: what happened and the report of it, no checkpoints
    written = {path.name for path in run_dir.iterdir()} - {"tensorboard"}  # event files when tensorboard is installed
    assert written == {"config.json", "metrics.json", "train.log", "curves.png", "report.html"}
    metrics = json.loads((run_dir / artifacts.METRICS_FILE).read_text())
    assert metrics["status"] == "failed" and "OutOfMemory" in metrics["error"]


def test_a_step_predicted_not_to_fit_stops_before_training(make_config, monkeypatch):
    # as if the preflight step had peaked at 1 TiB: more than any machine here has
    monkeypatch.setattr(memory_check, "peak_process_memory_mb", lambda: 2.0**20)
    config = make_config(training={"freeze_backbone": False})
    with pytest.raises(OutOfMemory, match="predicted before training"):
        run_training(config)
    (run_dir,) = Path(config.output.artifacts_root).iterdir()
    assert not (run_dir / artifacts.BEST_MODEL_FILE).exists()
    assert run_dir.joinpath("train.log").read_text().count("event=step") == 0


def test_out_of_memory_later_in_training_is_explained_too(make_config, monkeypatch):
    from finetune_pipeline.core import training

    def evaluate_out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(training, "evaluate", evaluate_out_of_memory)
    with pytest.raises(OutOfMemory, match="during training"):
        run_training(make_config())


def test_dry_run_prints_the_plan_and_writes_nothing(make_config, tmp_path):
    config = make_config(data={"max_length": 8}, training={"batch_size": 4, "gradient_accumulation_steps": 3})
    config_path = tmp_path / "dry.json"
    config_path.write_text(json.dumps(config.to_plain()))
    result = subprocess.run(
        [sys.executable, "-m", "finetune_pipeline.cli", "train", "--config", str(config_path), "--dry-run"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"max_length": 8' in out  # the effective config
    assert "splits: train 48, val 16, test 16" in out
    assert "truncated 0 (0.0%)" in out  # toy texts are 7 tokens long
    assert "optimizer steps: 4 per epoch x 2 epochs = 8 (effective batch 12 = batch 4 x accumulation 3)" in out
    assert "preflight" in out and "fits" in out
    assert not Path(config.output.artifacts_root).exists()
    assert not Path(config.output.cache_dir).exists()


def test_a_dry_run_that_does_not_fit_exits_3_with_the_knobs(make_config, monkeypatch, capsys):
    monkeypatch.setattr(memory_check, "peak_process_memory_mb", lambda: 2.0**20)
    config = make_config()
    monkeypatch.setattr("finetune_pipeline.core.config.load_config", lambda path, overrides=None: config)
    assert cli.main(["train", "--dry-run"]) == EXIT_OUT_OF_MEMORY
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out
    assert "predicted by the dry run" in captured.err and "training.eval_batch_size" in captured.err
    assert not Path(config.output.artifacts_root).exists()


def test_peak_memory_starts_over_for_each_run_in_one_process():
    if not device.PROC_CLEAR_REFS.exists():
        pytest.skip("resetting the peak needs Linux's /proc/self/clear_refs")
    block = torch.ones(300 * 2**20 // 4)  # 300 MiB, touched
    del block
    before_reset = device.peak_process_memory_mb()
    device.reset_peak_process_memory()
    assert device.peak_process_memory_mb() < before_reset - 200


def test_gradient_checkpointing_trades_compute_not_results(make_config):
    common = {"freeze_backbone": False, "epochs": 1}
    assert prepare_run(make_config(training={**common, "gradient_checkpointing": True})).model.backbone.is_activation_checkpointing
    assert not prepare_run(make_config(training=common)).model.backbone.is_activation_checkpointing
    plain = run_training(make_config(training={**common, "gradient_checkpointing": False}))
    checkpointed = run_training(make_config(training={**common, "gradient_checkpointing": True}))
    plain_state = files.load_checkpoint(plain / artifacts.FINAL_MODEL_FILE)["model_state"]
    checkpointed_state = files.load_checkpoint(checkpointed / artifacts.FINAL_MODEL_FILE)["model_state"]
    assert all(torch.allclose(plain_state[name], checkpointed_state[name], atol=1e-6) for name in plain_state)


def test_out_of_memory_advice_reruns_this_very_run_with_the_first_change(make_config, monkeypatch, tmp_path, capsys):
    """The command in the message repeats the run in question: its config file and --set values (no run folder
    yet), or its run folder's config.json (one exists), plus the change."""
    monkeypatch.setattr(memory_check, "peak_process_memory_mb", lambda: 2.0**20)
    config_path = tmp_path / "mine.json"
    config_path.write_text(json.dumps(make_config(training={"freeze_backbone": False}).to_plain()))
    assert cli.main(["train", "--config", str(config_path), "--set", "model.dropout=0.3", "--dry-run"]) == 3
    assert (f"Rerun it with the first of them: finetune train --config {config_path} --set model.dropout=0.3 "
            "--set training.batch_size=2 --set training.gradient_accumulation_steps=4") in capsys.readouterr().err
    assert cli.main(["train", "--config", str(config_path), "--set", "model.dropout=0.3"]) == 3
    (run_dir,) = Path(make_config().output.artifacts_root).iterdir()
    assert (f"Rerun it with the first of them: finetune train --from-run {run_dir} --set training.batch_size=2 "
            "--set training.gradient_accumulation_steps=4") in capsys.readouterr().err


@pytest.mark.parametrize("training, fix", [
    ({"freeze_backbone": True, "cache_features": True, "eval_batch_size": 32}, {"training.eval_batch_size": 16}),
    ({"freeze_backbone": True, "cache_features": False, "batch_size": 4, "gradient_accumulation_steps": 2},
     {"training.batch_size": 2, "training.gradient_accumulation_steps": 4}),
    ({"freeze_backbone": False, "batch_size": 1}, {"training.gradient_checkpointing": True}),
    ({"freeze_backbone": False, "batch_size": 1, "gradient_checkpointing": True}, {"data.max_length": 16}),
])
def test_the_first_fix_keeps_the_effective_batch(make_config, training, fix):
    assert memory_check.first_fix(make_config(training=training)) == fix
