"""One training run, start to finish: check the inputs, train, evaluate, and write the run folder.

Everything that can be wrong with the user's input (config, data, backbone) is checked before the
run folder exists, so a bad input leaves nothing behind.
"""

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from finetune_pipeline import artifacts
from finetune_pipeline.config import Config
from finetune_pipeline.data import Splits, load_splits, tokenize_split
from finetune_pipeline.device import Precision, peak_process_memory_mb, resolve_device, resolve_precision
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.evaluation import evaluate
from finetune_pipeline.freeze_proof import build_freeze_proof, snapshot
from finetune_pipeline.model import backbone_max_length, build_model, count_parameters
from finetune_pipeline.run_log import RunLogging, log_event
from finetune_pipeline.training import TrainingOutcome, optimizer_steps_per_epoch, train_model


def run_training(config: Config) -> Path:
    """Train as the config says and return the run folder."""
    started = time.perf_counter()
    device = resolve_device(config.training.device)
    precision = resolve_precision(config.training.mixed_precision, device)
    splits = load_splits(config.data, config.seed)

    transformers.set_seed(config.seed)  # python, numpy and torch RNGs: the head starts the same every time
    model, tokenizer = build_model(config.model, len(splits.label_names), freeze=config.training.freeze_backbone)
    longest = backbone_max_length(model.backbone)
    if longest is not None and config.data.max_length > longest:
        raise UserInputError(
            f"data.max_length: {config.data.max_length} is more than the backbone '{config.model.backbone}' "
            f"can read ({longest} tokens); set it to {longest} or less"
        )
    tokenized = {
        name: tokenize_split(examples, splits.label_names, tokenizer, config.data.max_length)
        for name, examples in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    model.to(device)

    run_dir = artifacts.create_run_dir(config.output.artifacts_root)
    artifacts.write_json(run_dir / artifacts.CONFIG_FILE, config.to_plain())
    with RunLogging(run_dir / artifacts.TRAIN_LOG_FILE):
        metrics = initial_metrics(config, splits, model, device, precision)
        log_run_start(config, run_dir, splits, metrics, precision)
        artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)

        def record_epoch(outcome: TrainingOutcome) -> None:
            metrics.update(progress_metrics(outcome, config))
            metrics["wall_time_s"] = time.perf_counter() - started
            artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)

        try:
            # A frozen backbone is not copied (it should not change: the hashes prove whether it did);
            # a trained one is, to measure how far it moved.
            backbone_before = snapshot(model.backbone, keep_copy=not config.training.freeze_backbone)
            head_before = snapshot(model.head, keep_copy=True)
            outcome = train_model(
                model, tokenized["train"], tokenized["val"], splits.label_names, config,
                tokenizer.pad_token_id, device, precision, run_dir, on_epoch_end=record_epoch,
            )
            artifacts.save_torch(
                run_dir / artifacts.FINAL_MODEL_FILE,
                artifacts.checkpoint_payload(model, splits.label_names, config, outcome.history[-1].epoch, outcome.steps),
            )
            proof = build_freeze_proof(backbone_before, head_before, model.backbone, model.head,
                                       config.training.freeze_backbone)
            artifacts.write_json(run_dir / artifacts.FREEZE_PROOF_FILE, proof)
            log_event("freeze_proof", backbone_changed=proof["backbone_changed"],
                      consistent_with_config=proof["consistent_with_config"], head_changed=proof["head_changed"],
                      level=logging.INFO if proof["consistent_with_config"] else logging.WARNING)

            # Test once, with the best checkpoint (read back from disk: this also proves the file loads).
            best = artifacts.load_checkpoint(run_dir / artifacts.BEST_MODEL_FILE)
            model.load_state_dict(best["model_state"])
            artifacts.save_torch(run_dir / artifacts.HEAD_FILE, model.head.state_dict())
            test_metrics = evaluate(model, tokenized["test"], splits.label_names, config.training.eval_batch_size,
                                    tokenizer.pad_token_id, device, precision)
            metrics.update(
                status="completed",
                test_score=test_metrics[config.training.metric],
                test_metrics=test_metrics,
                freeze_proof={key: proof[key] for key in ("backbone_changed", "consistent_with_config", "head_changed")},
            )
            log_event("test", best_epoch=outcome.best_epoch, test_score=metrics["test_score"],
                      test_accuracy=test_metrics["accuracy"], test_macro_f1=test_metrics["macro_f1"])
        except KeyboardInterrupt:
            metrics["status"] = "interrupted"
            log_event("interrupted", level=logging.WARNING, message="stopped by Ctrl-C; files written so far are complete")
            raise
        except BaseException as err:
            metrics.update(status="failed", error=f"{type(err).__name__}: {err}")
            log_event("failed", level=logging.ERROR, error=metrics["error"])
            raise
        finally:
            metrics["wall_time_s"] = time.perf_counter() - started
            metrics["peak_memory_mb"] = peak_memory_mb(device)
            artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)
        log_event("done", run_dir=run_dir, wall_time_s=metrics["wall_time_s"],
                  **{f"peak_{kind}_mb": value for kind, value in metrics["peak_memory_mb"].items()})
    return run_dir


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"process_rss": peak_process_memory_mb()}
    if device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def initial_metrics(
    config: Config, splits: Splits, model: torch.nn.Module, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """metrics.json as it stands before the first step; filled in as the run goes."""
    return {
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
        "seed": config.seed,
        "config_hash": config.fingerprint(),
        "device": str(device),
        "mixed_precision": {"requested": precision.requested, "used": precision.used, "reason": precision.reason},
        "effective_batch_size": config.effective_batch_size(),
        "optimizer_steps_per_epoch": optimizer_steps_per_epoch(len(splits.train), config.training),
        "parameters": count_parameters(model),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "wall_time_s": 0.0,
        "epoch_times_s": [],
        "peak_memory_mb": None,
    }


def progress_metrics(outcome: TrainingOutcome, config: Config) -> dict[str, Any]:
    return {
        "best_val_score": outcome.best_val_score,
        "best_epoch": outcome.best_epoch,
        "val_metrics": outcome.best_val_metrics,
        "optimizer_steps": outcome.steps,
        "stopped_early": outcome.stopped_early,
        "epoch_times_s": [record.time_s for record in outcome.history],
        "history": [
            {"epoch": r.epoch, "train_loss": r.train_loss, "val_score": r.val_score,
             "val_accuracy": r.val_metrics["accuracy"], "val_macro_f1": r.val_metrics["macro_f1"], "time_s": r.time_s}
            for r in outcome.history
        ],
    }


def log_run_start(config: Config, run_dir: Path, splits: Splits, metrics: dict[str, Any], precision: Precision) -> None:
    log_event("start", run_dir=run_dir, seed=config.seed, config_hash=metrics["config_hash"][:12],
              device=metrics["device"], backbone=config.model.backbone)
    log_event("data", **{f"{name}_size": size for name, size in splits.sizes().items()},
              labels=",".join(splits.label_names), max_length=config.data.max_length)
    parameters = metrics["parameters"]
    log_event("setup", freeze_backbone=config.training.freeze_backbone, trainable_parameters=parameters["trainable"],
              total_parameters=parameters["total"], batch_size=config.training.batch_size,
              gradient_accumulation_steps=config.training.gradient_accumulation_steps,
              effective_batch_size=metrics["effective_batch_size"],
              steps_per_epoch=metrics["optimizer_steps_per_epoch"], epochs=config.training.epochs)
    if precision.reason:
        log_event("precision_fallback", level=logging.WARNING, requested=precision.requested, used=precision.used,
                  reason=precision.reason)
    else:
        log_event("precision", used=precision.used)
    if config.training.freeze_backbone and "encoder_learning_rate" in config.training.model_fields_set:
        log_event("warning", level=logging.WARNING,
                  message="training.encoder_learning_rate is ignored: the backbone is frozen (freeze_backbone=true)")
