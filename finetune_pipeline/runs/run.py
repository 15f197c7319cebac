"""One training run, start to finish, in three phases:

    prepare  check and load everything the run needs (preparation.prepare_run); nothing is written yet, so a
             bad input (config, data, backbone) leaves nothing behind
    execute  train and test (execute), the same steps in every process under torchrun
    record   everything the run keeps goes through one RunFolder (run_folder.py), whatever happens

run_training starts a run, resume_training continues one; both go prepare -> execute.
"""

import time
from pathlib import Path
from typing import Any

from finetune_pipeline.core.batching import InputSplit
from finetune_pipeline.core.config import Config
from finetune_pipeline.core.device import reset_peak_process_memory, resolve_device
from finetune_pipeline.core.calibration import calibrate
from finetune_pipeline.core.evaluation import predict_logits
from finetune_pipeline.core.freeze_proof import build_freeze_proof, snapshot
from finetune_pipeline.core.training import TrainingState, train_model
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runs.memory_check import check_fits, run_preflight
from finetune_pipeline.runs.mistakes import mistakes_record
from finetune_pipeline.runs.preparation import PreparedRun, prepare_run
from finetune_pipeline.runs.resume import (
    check_resumable,
    check_same_data,
    restore_resume_checkpoint,
    resumed_step,
)
from finetune_pipeline.runs.run_folder import RunFolder, initial_metrics
from finetune_pipeline.runs.run_inputs import training_inputs
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime import distributed, files
from finetune_pipeline.runtime.run_log import log_event


def run_training(config: Config, origin: dict[str, Any] | None = None) -> Path:
    """Train as the config says and return the run folder.

    origin says where the config came from (config file, --set overrides, sweep member); it is recorded
    in metrics.json as it is.
    """
    started = time.perf_counter()
    reset_peak_process_memory()
    with distributed.process_group(resolve_device(config.training.device).type):
        prepared = prepare_run(config)
        run = RunFolder.create(prepared, initial_metrics(prepared, origin or {}), started)
        return execute(prepared, run)


def resume_training(run_dir: Path, force: bool = False) -> Path:
    """Continue an interrupted or crashed run from its resume checkpoint, in its own folder."""
    config, metrics, checkpoint = check_resumable(run_dir, force)
    from_step = resumed_step(checkpoint)  # no checkpoint yet: the run starts over
    log_event("resuming", run_dir=run_dir, status=run_lock.run_status(run_dir, metrics), from_step=from_step)
    files.remove_stale_temporaries(run_dir)
    started = time.perf_counter() - (metrics.wall_time_s or 0.0)  # wall_time_s counts every session's time
    reset_peak_process_memory()
    with distributed.process_group(resolve_device(config.training.device).type):
        prepared = prepare_run(config)
        check_same_data(run_dir, config, metrics, prepared.splits.rows_sha256)
        metrics.resumed_from_steps = [*metrics.resumed_from_steps, from_step]
        if checkpoint is None:  # starting over: the setup as measured now, the origin and the sessions kept
            metrics = initial_metrics(prepared, metrics.as_json())
        return execute(prepared, RunFolder(run_dir, prepared, metrics, started), checkpoint)


def execute(prepared: PreparedRun, run: RunFolder, checkpoint: dict[str, Any] | None = None) -> Path:
    """Train and test, the same steps in every process (they meet in every gradient sum, extraction and
    evaluation); run records it all, whatever happens. checkpoint: resume.pt's contents, to continue from."""
    config, model, placement = prepared.config, prepared.model, prepared.placement
    task, training = prepared.task, prepared.config.training
    state = TrainingState.start(model, training, len(prepared.splits.train), placement)
    with run.recording(state, resuming=checkpoint is not None):
        head_before = snapshot(model.head)  # the seeded initial head, also when resuming
        adapters_before = snapshot(model.adapter_state())  # and the seeded initial LoRA adapters
        train_split, val_split, test_split = training_inputs(prepared, run.metrics)
        check_memory(prepared, train_split, run.metrics)
        if checkpoint is not None:
            restore_resume_checkpoint(checkpoint, model, state, run.path)
        train_model(model, train_split, val_split, task, config, placement, state, run)
        run.save_model(artifacts.FINAL_MODEL_FILE, state.history[-1].epoch, state.step)
        proof = build_freeze_proof(prepared.backbone_before, head_before, adapters_before, model, prepared.mode)
        run.write_freeze_proof(proof)
        best_at = run.load_best_model(model)  # test once, with the best checkpoint, once calibrated on val
        val_logits, test_logits = (predict_logits(model, split, training.eval_batch_size, placement)
                                   for split in (val_split, test_split))
        calibration = calibrate(model, task, (val_logits, val_split.labels), (test_logits, test_split.labels))
        # the logits the model gives now: each divided by the temperature, as the head divides them
        val_logits, test_logits = model.head.calibrated(val_logits), model.head.calibrated(test_logits)
        thresholds = model.head.decision_thresholds
        test_metrics = task.metrics(test_logits, test_split.labels, thresholds)
        mistakes = {name: mistakes_record(task, logits, split.labels, examples, thresholds)
                    for name, logits, split, examples in (("val", val_logits, val_split, prepared.splits.val),
                                                          ("test", test_logits, test_split, prepared.splits.test))}
        run.completed(test_metrics, proof, calibration, mistakes, best_at)
    return run.path


def check_memory(prepared: PreparedRun, train: InputSplit, metrics: RunMetrics) -> None:
    """Stop before training when the heaviest step is predicted not to fit (the preflight goes into metrics).

    With the feature cache the heaviest step is extraction, whose first batch is its longest: it fails fast by
    itself, and a cache hit needs no backbone pass at all. Extracting cached hidden states fails as fast; the
    preflight then tries a training step on them.
    """
    if prepared.mode.caches_features:
        return
    preflight = run_preflight(prepared.model, train, prepared.config, prepared.placement, prepared.mode, prepared.task)
    metrics.preflight = preflight.as_dict()
    log_event("preflight", **metrics.preflight)
    check_fits(preflight, prepared.config)


