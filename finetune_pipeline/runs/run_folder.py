"""The run folder and what a run records in it: train.log, metrics.json, run.lock, the checkpoints, the freeze
proof and the report, all through one RunFolder, whatever happens: a failed or interrupted run is recorded as
such. Under torchrun rank 0 alone writes."""

import contextlib
import logging
import platform
import time
from shlex import quote
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers

from finetune_pipeline.core.config import Config
from finetune_pipeline.core.data import describe_sources
from finetune_pipeline.core.device import peak_process_memory_mb
from finetune_pipeline.core.leakage import LEAKAGE_COUNTS
from finetune_pipeline.core.model import TextClassifier, count_parameters
from finetune_pipeline.core.task import Task
from finetune_pipeline.core.training import TrainingState, optimizer_steps_per_epoch
from finetune_pipeline.errors import system_fault
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runs.baselines import baseline_scores, score_flags
from finetune_pipeline.runs.memory_check import is_out_of_memory, out_of_memory
from finetune_pipeline.runs.preparation import PreparedRun, label_distributions, token_lengths
from finetune_pipeline.runs.provenance import code_version, data_fingerprints
from finetune_pipeline.runs.report import write_run_report
from finetune_pipeline.runs.resume import save_resume_checkpoint
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runs.tensorboard_log import TensorBoardHandler, open_tensorboard
from finetune_pipeline.runtime import distributed, files
from finetune_pipeline.runtime.interruption import stop_signals_handled
from finetune_pipeline.runtime.run_log import RunLogging, log_event, logger

# Held for the span of a run and removed first thing when it ends, so that a disk filled during the run (by the run or
# by anything else) still has room for the record of how it ended: metrics.json, the report. The .tmp suffix: a
# killed run's is removed by whoever takes the folder over (files.remove_stale_temporaries).
RESERVED_SPACE_FILE = ".reserved-space.tmp"
RESERVED_SPACE_BYTES = 4 * 2**20


class RunFolder:
    """The run folder, and every write into it: train.log, metrics.json, run.lock, the checkpoints, the freeze
    proof and the report. Under torchrun every process holds one and makes the same calls: the methods marked
    @distributed.main_process_only do their work in rank 0 alone, and the other processes' log is silent."""

    def __init__(self, path: Path, prepared: PreparedRun, metrics: RunMetrics, started: float) -> None:
        self.path = path
        self.prepared = prepared
        self.metrics = metrics  # metrics.json as it will next be written
        self.started = started  # time.perf_counter() when the run (its first session) started
        self.tensorboard: TensorBoardHandler | None = None

    @classmethod
    def create(cls, prepared: PreparedRun, metrics: RunMetrics, started: float) -> "RunFolder":
        """A new folder under output.artifacts_root, with config.json: rank 0 makes it, the others learn where."""
        path = distributed.broadcast_from_main(new_run_dir(prepared.config, prepared.model))
        return cls(Path(path), prepared, metrics, started)

    @contextlib.contextmanager
    def recording(self, state: TrainingState, resuming: bool) -> Iterator[None]:
        """For the span of a run: the log goes to train.log, Ctrl-C and SIGTERM stop between two optimizer steps,
        and whatever happens, metrics.json, the lock and the report end up saying how the run ended."""
        with self.train_log(), stop_signals_handled():
            self.start(resuming)
            try:
                yield
            except BaseException as error:
                raise self.stopped(error, state) from None
            finally:
                self.finish()

    @contextlib.contextmanager
    def train_log(self) -> Iterator[None]:
        """The package's log goes to train.log (and TensorBoard, when installed) in rank 0, nowhere elsewhere."""
        if not self.prepared.placement.processes.is_main:
            logger.disabled = True  # rank 0 speaks for every process
            try:
                yield
            finally:
                logger.disabled = False
            return
        self.tensorboard = open_tensorboard(self.path)  # None without the optional tensorboard package
        with RunLogging(self.path / artifacts.TRAIN_LOG_FILE, *filter(None, [self.tensorboard])):
            yield

    def stopped(self, error: BaseException, state: TrainingState) -> BaseException:
        """Record why the run stopped; returns the error to raise (out of memory or a full disk, explained)."""
        if is_out_of_memory(error):
            error = out_of_memory(self.prepared.config, "during training", str(error).splitlines()[0])
        elif isinstance(error, OSError):  # a full disk, a folder that became unwritable
            error = system_fault(error)
            error.args = (f"{error}; then {continue_advice(self.path)}",)
        interrupted = isinstance(error, KeyboardInterrupt)
        self.metrics.record(status="interrupted" if interrupted else "failed",
                            optimizer_steps=state.step)  # the epochs' figures are in since each epoch's end
        if interrupted:
            if state.step > 0:  # signals wait for a step to complete: these are its weights
                self.save_model(artifacts.FINAL_MODEL_FILE, len(state.history) + 1, state.step)
            log_event("interrupted", level=logging.WARNING, signal=str(error) or "SIGINT", step=state.step,
                      message=f"stopped; files written so far are complete; {continue_advice(self.path)}")
        else:
            self.metrics.error = f"{type(error).__name__}: {error}"
            log_event("failed", level=logging.ERROR, error=self.metrics.error)
        with contextlib.suppress(AttributeError):  # a few built-in exceptions take no attributes
            error.run_dir = self.path  # the CLI names it: what the run wrote, and what --resume continues
        return error

    def load_best_model(self, model: TextClassifier) -> tuple[int, int]:
        """The best checkpoint's weights into model, in every process: rank 0 reads best_model.pt back from disk
        (which also proves that the file loads) and sends it to the others. Returns its (epoch, step)."""
        path = self.path / artifacts.BEST_MODEL_FILE
        payload = distributed.broadcast_from_main(
            files.load_checkpoint(path) if self.prepared.placement.processes.is_main else None)
        artifacts.restore_weights(model, payload, path)
        return payload["epoch"], payload["step"]

    # The writes, made by rank 0 alone.

    @distributed.main_process_only
    def start(self, resuming: bool) -> None:
        run_lock.acquire(self.path)
        files.reserve_space(self.path / RESERVED_SPACE_FILE, RESERVED_SPACE_BYTES)
        self.metrics.status = "running"
        if not resuming:
            log_run_start(self.prepared, self.path, self.metrics)
        if self.metrics.resumed_from_steps:
            log_event("resume", step=self.metrics.resumed_from_steps[-1], checkpoint=self.path / artifacts.RESUME_FILE
                      if resuming else "none yet: starting over")
        self.metrics.write(self.path / artifacts.METRICS_FILE)

    @distributed.main_process_only
    def record_epoch(self, state: TrainingState) -> None:
        self.metrics.record(**progress_metrics(state, self.prepared.task), wall_time_s=time.perf_counter() - self.started)
        self.metrics.write(self.path / artifacts.METRICS_FILE)

    @distributed.main_process_only
    def save_model(self, file_name: str, epoch: int, step: int) -> None:
        files.save_torch(self.path / file_name, self.model_payload(epoch, step))

    @distributed.main_process_only
    def save_best_model(self, state: TrainingState) -> None:
        self.save_model(artifacts.BEST_MODEL_FILE, state.epoch, state.step)

    @distributed.main_process_only
    def save_resume_checkpoint(self, state: TrainingState) -> None:
        if self.prepared.placement.processes.distributed:
            return  # resuming a torchrun run is not supported: each process has its own random state
        save_resume_checkpoint(self.path, self.model_payload(state.epoch, state.step), state)

    @distributed.main_process_only
    def write_freeze_proof(self, proof: dict[str, Any]) -> None:
        files.write_json(self.path / artifacts.FREEZE_PROOF_FILE, proof)
        log_event("freeze_proof", backbone_changed=proof["backbone_changed"],
                  consistent_with_config=proof["consistent_with_config"], head_changed=proof["head_changed"],
                  level=logging.INFO if proof["consistent_with_config"] else logging.WARNING)

    @distributed.main_process_only
    def completed(self, test_metrics: dict[str, Any], proof: dict[str, Any], calibration: dict[str, Any] | None,
                  mistakes: dict[str, Any], best_at: tuple[int, int]) -> None:
        """best_at: the best checkpoint's (epoch, step), as load_best_model read them."""
        if calibration is not None:  # the best checkpoint again, with the temperature fitted on val
            self.save_model(artifacts.BEST_MODEL_FILE, *best_at)
        files.save_torch(self.path / artifacts.HEAD_FILE, self.prepared.model.head.state_dict())  # the best head
        self.metrics.record(
            calibration=calibration,
            mistakes=mistakes,
            status="completed",
            test_score=test_metrics[self.prepared.config.training.metric],
            test_metrics=test_metrics,
            freeze_proof={key: proof[key] for key in ("backbone_changed", "consistent_with_config", "head_changed")},
        )
        log_event("test", best_epoch=self.metrics.best_epoch, test_score=self.metrics.test_score,
                  **{f"test_{name}": test_metrics[name] for name in self.prepared.task.metric_names})
        self.metrics.record(score_flags=score_flags(self.metrics))
        for flag in self.metrics.score_flags:
            log_event("score_flag", level=logging.WARNING, message=flag)
        (self.path / artifacts.RESUME_FILE).unlink(missing_ok=True)  # a completed run cannot be resumed

    @distributed.main_process_only
    def finish(self) -> None:
        """metrics.json as the run ends, the lock released, then curves.png, report.html and TensorBoard's
        hparams, and for a completed run the `done` line. Also after a failure: a problem with the report is
        logged, never raised, so that it cannot hide the run's own error."""
        (self.path / RESERVED_SPACE_FILE).unlink(missing_ok=True)  # room for these last records on a full disk
        self.metrics.record(wall_time_s=time.perf_counter() - self.started,
                            peak_memory_mb=peak_memory_mb(self.prepared.placement.device))
        self.metrics.write(self.path / artifacts.METRICS_FILE)
        run_lock.release(self.path)
        try:
            if self.tensorboard is not None:
                self.tensorboard.write_hparams(self.prepared.config.to_plain(), self.metrics.as_json())
            write_run_report(self.path)
        except OSError as error:
            log_event("warning", level=logging.WARNING, message=f"report not written: {error}")
        if self.metrics.status == "completed":
            log_event("done", run_dir=self.path, wall_time_s=self.metrics.wall_time_s,
                      **{f"peak_{kind}_mb": value for kind, value in (self.metrics.peak_memory_mb or {}).items()})

    def model_payload(self, epoch: int, step: int) -> dict[str, Any]:
        prepared = self.prepared
        return artifacts.checkpoint_payload(prepared.model, prepared.task, prepared.config, epoch, step,
                                            prepared.backbone_before.hashes)


def continue_advice(run_dir: Path) -> str:
    """How to go on from a stopped run: resume it, or under torchrun (no resume checkpoint: every process has its
    own random state) start it again."""
    if distributed.world().distributed:
        return f"a torchrun run cannot be resumed: start it again with `finetune train --from-run {quote(str(run_dir))}`"
    return f"continue it with `finetune train --resume {quote(str(run_dir))}`"


@distributed.main_process_only
def new_run_dir(config: Config, model: TextClassifier) -> Path:
    """Check the disk has room for the checkpoints, make the folder, write config.json into it."""
    artifacts.check_free_space(config.output.artifacts_root, artifacts.expected_artifact_bytes(model, config))
    run_dir = artifacts.create_run_dir(config.output.artifacts_root)
    files.write_json(run_dir / artifacts.CONFIG_FILE, config.to_plain())
    return run_dir


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"process_rss": peak_process_memory_mb()}
    if device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def initial_metrics(prepared: PreparedRun, kept: dict[str, Any]) -> RunMetrics:
    """metrics.json as it stands before the first step, over the fields in kept (where the config came from;
    when a resumed run starts over, what its earlier sessions recorded); filled in as the run goes."""
    config, splits, precision = prepared.config, prepared.splits, prepared.placement.precision
    return RunMetrics.model_validate(kept | {
        "status": "running",  # becomes completed | failed | interrupted
        "metric": config.training.metric,
        "best_val_score": None,
        "best_epoch": None,
        "test_score": None,
        "val_metrics": None,
        "test_metrics": None,
        "history": [],
        "split_sizes": splits.sizes(),
        "label_names": splits.label_names,
        "task": prepared.task.record(),
        "label_distribution": label_distributions(prepared),
        "baselines": baseline_scores(prepared.task, prepared.tokenized, config.seed),
        "leakage": splits.leakage,
        "class_weights": prepared.task.class_weight_table(),
        "token_lengths": token_lengths(prepared),
        "tokenization": prepared.tokenization,
        "language_warning": prepared.language_warning,
        "seed": config.seed,
        "config_hash": config.fingerprint(),
        "data_files": data_fingerprints(config.data, splits.rows_sha256),
        "data_sources": describe_sources(config.data, config.seed, type(prepared.task)),
        "code_version": code_version(),
        "device": str(prepared.placement.device),
        "mixed_precision": {"requested": precision.requested, "used": precision.used, "reason": precision.reason},
        "processes": prepared.placement.processes.size,
        "tf32_matmul": prepared.placement.device.type == "cuda",
        "effective_batch_size": config.effective_batch_size() * prepared.placement.processes.size,
        "optimizer_steps_per_epoch": optimizer_steps_per_epoch(len(splits.train), config.training,
                                                               prepared.placement.processes.size),
        "parameters": count_parameters(prepared.model, 0 if prepared.model.backbone is not None
                                       else prepared.backbone_parameters),
        "backbone_sha256": prepared.backbone_sha256,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "wall_time_s": 0.0,
        "epoch_times_s": [],
        "peak_memory_mb": None,
    })


def progress_metrics(state: TrainingState, task: Task) -> dict[str, Any]:
    return {
        "best_val_score": state.best_val_score,
        "best_epoch": state.best_epoch,
        "val_metrics": state.best_val_metrics,
        "optimizer_steps": state.step,
        "stopped_early": state.stopped_early,
        "epoch_times_s": [record.time_s for record in state.history],
        "history": [
            {"epoch": r.epoch, "train_loss": r.train_loss, "val_score": r.val_score,
             **{f"val_{name}": r.val_metrics[name] for name in task.metric_names}, "time_s": r.time_s,
             "train_time_s": r.train_time_s}
            for r in state.history
        ],
    }


def log_run_start(prepared: PreparedRun, run_dir: Path, metrics: RunMetrics) -> None:
    config, training, precision = prepared.config, prepared.config.training, prepared.placement.precision
    log_event("start", run_dir=run_dir, seed=config.seed, config_hash=prepared.config.fingerprint()[:12],
              device=metrics.device, backbone=config.model.backbone)
    log_event("data_sources", **(metrics.data_sources or {}))
    log_event("tokenization", **{f"{name}_{key}": value for name, stats in prepared.tokenization.items()
                                 for key, value in stats.items()})
    if prepared.language_warning:
        log_event("language_warning", level=logging.WARNING, message=prepared.language_warning)
    log_event("data", **{f"{name}_size": size for name, size in prepared.splits.sizes().items()},
              labels=",".join(prepared.splits.label_names), max_length=config.data.max_length,
              **{f"{name}_truncated": stats["truncated"] for name, stats in metrics.token_lengths.items()})
    leakage = prepared.splits.leakage
    log_event("leakage", **{f"{kind}_{match}": leakage[kind][match] for kind in LEAKAGE_COUNTS
                            for match in ("exact", "normalised")},
              label_conflicts=leakage["label_conflicts"]["texts"],
              **{f"dropped_{split}": count for split, count in leakage.get("dropped", {}).items()})
    for warning in leakage["warnings"]:
        log_event("leakage_warning", level=logging.WARNING, message=warning)
    if metrics.class_weights is not None:
        log_event("class_weights", **metrics.class_weights)
    parameters = metrics.parameters or {}
    log_event("setup", freeze_backbone=training.freeze_backbone, feature_cache=prepared.mode.caches_features,
              backbone_loaded=prepared.model.backbone is not None,
              trainable_parameters=parameters["trainable"], total_parameters=parameters["total"],
              batch_size=training.batch_size, gradient_accumulation_steps=training.gradient_accumulation_steps,
              effective_batch_size=metrics.effective_batch_size,
              steps_per_epoch=metrics.optimizer_steps_per_epoch, epochs=training.epochs)
    if precision.reason:
        log_event("precision_fallback", level=logging.WARNING, requested=precision.requested, used=precision.used,
                  reason=precision.reason)
    else:
        log_event("precision", used=precision.used)
    defaults = type(training).model_fields
    for key in sorted(prepared.mode.ignored_keys):
        name = key.removeprefix("training.")
        if getattr(training, name) != defaults[name].default:
            log_event("warning", level=logging.WARNING,
                      message=f"{key} is ignored: the backbone is frozen (freeze_backbone=true)")
