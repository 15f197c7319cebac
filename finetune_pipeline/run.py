"""One training run, start to finish: check the inputs, train, evaluate, and write the run folder.

Everything that can be wrong with the user's input (config, data, backbone) is checked before the
run folder exists, so a bad input leaves nothing behind.
"""

import logging
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers

from finetune_pipeline import artifacts, backbone_memo, distributed, run_lock
from finetune_pipeline.batching import TokenizedSplit, length_statistics, tokenize_split
from finetune_pipeline.config import Config
from finetune_pipeline.data import Splits, describe_sources, load_splits
from finetune_pipeline.language_check import language_warning, tokenization_report
from finetune_pipeline.device import (
    Precision,
    allow_tf32,
    peak_process_memory_mb,
    reset_peak_process_memory,
    resolve_device,
    resolve_precision,
)
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.evaluation import evaluate
from finetune_pipeline.feature_cache import Found, FeatureSplit, cache_key, extract_features, extract_missing, lookup_all
from finetune_pipeline.freeze_proof import Snapshot, build_freeze_proof, fingerprint_of, snapshot
from finetune_pipeline.interruption import stop_signals_handled
from finetune_pipeline.memory_check import check_fits, is_out_of_memory, out_of_memory, run_preflight
from finetune_pipeline.model import (
    TextClassifier,
    backbone_max_length,
    count_parameters,
    load_backbone,
    load_tokenizer,
    resolve_backbone,
)
from finetune_pipeline.provenance import code_version, data_fingerprints
from finetune_pipeline.report import write_run_report
from finetune_pipeline.resume import RESUME_FILE, check_resumable, save_resume_checkpoint
from finetune_pipeline.tensorboard_log import TensorBoardHandler, open_tensorboard
from finetune_pipeline.run_log import LOGGER_NAME, RunLogging, log_event
from finetune_pipeline.training import TrainingOutcome, optimizer_steps_per_epoch, train_model

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class PreparedRun:
    """Everything a run needs, checked and loaded, before anything is written."""

    config: Config
    device: torch.device
    precision: Precision
    splits: Splits
    model: TextClassifier
    tokenized: dict[str, TokenizedSplit]
    pad_token_id: int
    backbone_before: Snapshot  # the backbone's tensor hashes before training (remembered if it was not loaded)
    backbone_parameters: int
    feature_keys: dict[str, dict[str, Any]]  # per split; empty without the feature cache
    cached_features: Found  # what the feature cache holds for those keys
    tokenization: dict[str, dict[str, Any]]  # per split: script, tokens per word, unknown-token share
    language_warning: str | None  # when the backbone's tokenizer does not seem to know the texts' language

    @property
    def uses_feature_cache(self) -> bool:
        return uses_feature_cache(self.config)

    @property
    def backbone_sha256(self) -> str:
        return fingerprint_of(self.backbone_before.hashes)


def uses_feature_cache(config: Config) -> bool:
    return config.training.freeze_backbone and config.training.cache_features


def prepare_run(config: Config, dry_run: bool = False) -> PreparedRun:
    """Check and load everything the run needs; a dry run loads the weights in any case and writes nothing.

    A frozen run whose features are all in the feature cache does not load the backbone's weights (nor
    import the model code): the cache key needs only the weights' fingerprint, remembered in the cache
    folder (backbone_memo), and training needs only the head.
    """
    device = resolve_device(config.training.device)
    processes = distributed.start(device.type)  # under torchrun: join the other processes
    if device.type == "cuda" and processes.distributed:
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(config.training.mixed_precision, device)
    allow_tf32(device)
    splits = load_splits(config.data, config.seed)

    tokenizer, backbone_config = load_tokenizer(config.model.backbone)
    longest = backbone_max_length(backbone_config)
    if longest is not None and config.data.max_length > longest:
        raise UserInputError(
            f"data.max_length: {config.data.max_length} is more than the backbone '{config.model.backbone}' "
            f"can read ({longest} tokens); set it to {longest} or less"
        )
    examples = dict(zip(SPLIT_NAMES, (splits.train, splits.val, splits.test), strict=True))
    tokenized = {name: tokenize_split(split, splits.label_names, tokenizer, config.data.max_length)
                 for name, split in examples.items()}
    tokenization = tokenization_report(examples, tokenized, tokenizer)

    cache_dir, location = Path(config.output.cache_dir), resolve_backbone(config.model.backbone)
    remembered = backbone_memo.recall(cache_dir, location) if uses_feature_cache(config) else None
    keys, found = look_up_features(config, tokenized, remembered.sha256, precision, device) if remembered else ({}, {})
    all_cached = remembered is not None and all(features is not None for features, _, _ in found.values())

    backbone = None if all_cached and not dry_run else load_backbone(config.model.backbone)
    if backbone is None:
        backbone_before = Snapshot(remembered.tensor_hashes, original=dict)
        backbone_parameters = remembered.parameters
    else:
        backbone_before = snapshot(backbone, reload_original=lambda: load_backbone(config.model.backbone).state_dict())
        backbone_parameters = sum(parameter.numel() for parameter in backbone.parameters())
        if uses_feature_cache(config) and not dry_run:
            if processes.is_main:
                backbone_memo.remember(cache_dir, location,
                                       backbone_memo.BackboneFingerprint(backbone_before.hashes, backbone_parameters))
            if remembered is None or remembered.tensor_hashes != backbone_before.hashes:
                keys, found = look_up_features(config, tokenized, fingerprint_of(backbone_before.hashes), precision,
                                               device)

    # Seeded after loading: the head starts the same whether or not the backbone was loaded.
    transformers.set_seed(config.seed)  # python, numpy and torch RNGs
    model = TextClassifier(backbone, backbone_config, config.model, len(splits.label_names))
    if config.training.freeze_backbone:
        model.freeze_backbone()
    elif config.training.gradient_checkpointing:
        enable_activation_checkpointing(model.backbone)
    return PreparedRun(config, device, precision, splits, model.to(device), tokenized, tokenizer.pad_token_id,
                       backbone_before, backbone_parameters, keys, found, tokenization,
                       language_warning(tokenization, config.model.backbone))


def look_up_features(
    config: Config, tokenized: dict[str, TokenizedSplit], backbone_sha256: str, precision: Precision,
    device: torch.device,
) -> tuple[dict[str, dict[str, Any]], Found]:
    """Each split's cache key, and what the feature cache holds for it."""
    keys = {name: cache_key(split, config.model.backbone, backbone_sha256, config.model.pooling, precision, device)
            for name, split in tokenized.items()}
    return keys, lookup_all(Path(config.output.cache_dir), keys)


def enable_activation_checkpointing(backbone: torch.nn.Module) -> None:
    """Keep only each layer's input during forward and recompute the rest during backward."""
    if hasattr(backbone, "activation_checkpointing_enable"):  # the name since transformers 5
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def dry_run(config: Config) -> dict[str, Any]:
    """What a run would do, and whether its heaviest step fits in memory; writes nothing."""
    prepared = prepare_run(config, dry_run=True)
    preflight = run_preflight(prepared.model, prepared.tokenized["train"], config, prepared.device,
                              prepared.precision, prepared.uses_feature_cache)
    steps_per_epoch = optimizer_steps_per_epoch(len(prepared.splits.train), config.training)
    return {
        "config": config.to_plain(),
        "device": str(prepared.device),
        "mixed_precision": {"requested": prepared.precision.requested, "used": prepared.precision.used,
                            "reason": prepared.precision.reason},
        "data_sources": describe_sources(config.data, config.seed),
        "split_sizes": prepared.splits.sizes(),
        "label_names": prepared.splits.label_names,
        "token_lengths": token_lengths(prepared),
        "tokenization": prepared.tokenization,
        "language_warning": prepared.language_warning,
        "uses_feature_cache": prepared.uses_feature_cache,
        "effective_batch_size": config.effective_batch_size(),
        "optimizer_steps_per_epoch": steps_per_epoch,
        "optimizer_steps_total": steps_per_epoch * config.training.epochs,
        "preflight": preflight.as_dict(),
        "fits_in_memory": preflight.predicted_peak_mb <= preflight.available_mb,
    }


def token_lengths(prepared: PreparedRun) -> dict[str, dict[str, float]]:
    return {name: length_statistics(split, prepared.config.data.max_length) for name, split in prepared.tokenized.items()}


def run_training(config: Config, origin: dict[str, Any] | None = None) -> Path:
    """Train as the config says and return the run folder.

    origin says where the config came from (config file, --set overrides, sweep member); it is recorded
    in metrics.json as it is.
    """
    started = time.perf_counter()
    reset_peak_process_memory()
    prepared = prepare_run(config)
    if not distributed.world().is_main:
        return train_as_worker(prepared)
    artifacts.check_free_space(config.output.artifacts_root, artifacts.expected_artifact_bytes(
        prepared.model, backbone_included=not config.training.freeze_backbone))
    run_dir = artifacts.create_run_dir(config.output.artifacts_root)
    distributed.broadcast_from_main(str(run_dir))
    artifacts.write_json(run_dir / artifacts.CONFIG_FILE, config.to_plain())
    return execute_run(prepared, run_dir, initial_metrics(prepared) | (origin or {}), started)


def train_as_worker(prepared: PreparedRun) -> Path:
    """A process other than rank 0 under torchrun: the same steps as execute_run, in the same order (they
    meet in every gradient sum, extraction and evaluation), with its share of the work; no files, no logs."""
    logging.getLogger(LOGGER_NAME).disabled = True
    run_dir = Path(str(distributed.broadcast_from_main(None)))
    config, model = prepared.config, prepared.model
    (train_split, val_split, test_split), _ = training_inputs(prepared)
    best_state: dict[str, torch.Tensor] = {}

    def remember_best(epoch: int, step: int) -> None:
        best_state.update({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})

    train_model(model, train_split, val_split, prepared.splits.label_names, config, prepared.device,
                prepared.precision, TrainingOutcome(), on_new_best=remember_best, on_epoch_end=lambda outcome: None,
                save_state=None)
    model.load_state_dict(best_state)
    evaluate(model, test_split, prepared.splits.label_names, config.training.eval_batch_size, prepared.device,
             prepared.precision)
    return run_dir


def resume_training(run_dir: Path, force: bool = False) -> Path:
    """Continue an interrupted or crashed run from its resume checkpoint, in its own folder."""
    config, metrics, checkpoint = check_resumable(run_dir, force)
    from_step = checkpoint["step"] if checkpoint else 0  # no checkpoint yet: the run starts over
    log_event("resuming", run_dir=run_dir, status=run_lock.run_status(run_dir, metrics), from_step=from_step)
    artifacts.remove_stale_temporaries(run_dir)
    started = time.perf_counter() - metrics.get("wall_time_s", 0.0)  # wall_time_s counts every session's time
    reset_peak_process_memory()
    prepared = prepare_run(config)
    metrics["resumed_from_steps"] = [*metrics.get("resumed_from_steps", []), from_step]
    if checkpoint is None:
        metrics |= initial_metrics(prepared)
    return execute_run(prepared, run_dir, metrics, started, checkpoint)


def execute_run(
    prepared: PreparedRun, run_dir: Path, metrics: dict[str, Any], started: float,
    resume_checkpoint: dict[str, Any] | None = None,
) -> Path:
    """Train, test and write everything into run_dir, whatever happens; resume_checkpoint continues a run."""
    config, model, device, precision, splits = (prepared.config, prepared.model, prepared.device, prepared.precision,
                                                prepared.splits)
    tensorboard = open_tensorboard(run_dir)  # None without the optional tensorboard package
    outcome = TrainingOutcome()
    with RunLogging(run_dir / artifacts.TRAIN_LOG_FILE, *filter(None, [tensorboard])), stop_signals_handled():
        run_lock.acquire(run_dir)
        metrics["status"] = "running"
        if resume_checkpoint is None:
            log_run_start(prepared, run_dir, metrics)
        if "resumed_from_steps" in metrics:
            log_event("resume", step=metrics["resumed_from_steps"][-1], checkpoint=run_dir / RESUME_FILE
                      if resume_checkpoint else "none yet: starting over")
        artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)

        def record_epoch(outcome: TrainingOutcome) -> None:
            metrics.update(progress_metrics(outcome))
            metrics["wall_time_s"] = time.perf_counter() - started
            artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)

        def save_model(file_name: str, epoch: int, step: int) -> None:
            payload = artifacts.checkpoint_payload(model, splits.label_names, config, epoch, step,
                                                   prepared.backbone_sha256)
            artifacts.save_torch(run_dir / file_name, payload)

        def save_state(state: dict[str, Any]) -> None:
            model_payload = artifacts.checkpoint_payload(model, splits.label_names, config, state["epoch"],
                                                         state["step"], prepared.backbone_sha256)
            save_resume_checkpoint(run_dir, {**state, "model": model_payload})

        try:
            if not prepared.uses_feature_cache:
                # With the feature cache the heaviest step is extraction, whose first batch is its longest:
                # it fails fast by itself, and a cache hit needs no backbone pass at all.
                preflight = run_preflight(model, prepared.tokenized["train"], config, device, precision,
                                          uses_feature_cache=False)
                metrics["preflight"] = preflight.as_dict()
                log_event("preflight", **metrics["preflight"])
                check_fits(preflight, config)

            head_before = snapshot(model.head)  # the seeded initial head, also when resuming
            metrics["backbone_sha256"] = prepared.backbone_sha256
            (train_split, val_split, test_split), cache_status = training_inputs(prepared)
            if cache_status:
                metrics["feature_cache"] = cache_status
            if resume_checkpoint is not None:
                artifacts.restore_weights(model, resume_checkpoint["model"], run_dir / RESUME_FILE)

            train_model(
                model, train_split, val_split, splits.label_names, config, device, precision, outcome,
                on_new_best=lambda epoch, step: save_model(artifacts.BEST_MODEL_FILE, epoch, step),
                on_epoch_end=record_epoch, resume_from=resume_checkpoint,
                # resuming a torchrun run is not supported: each process has its own random state
                save_state=None if distributed.world().distributed else save_state,
            )
            save_model(artifacts.FINAL_MODEL_FILE, outcome.history[-1].epoch, outcome.steps)
            proof = build_freeze_proof(prepared.backbone_before, head_before, model.backbone, model.head,
                                       config.training.freeze_backbone)
            artifacts.write_json(run_dir / artifacts.FREEZE_PROOF_FILE, proof)
            log_event("freeze_proof", backbone_changed=proof["backbone_changed"],
                      consistent_with_config=proof["consistent_with_config"], head_changed=proof["head_changed"],
                      level=logging.INFO if proof["consistent_with_config"] else logging.WARNING)

            # Test once, with the best checkpoint (read back from disk: this also proves the file loads).
            best_path = run_dir / artifacts.BEST_MODEL_FILE
            artifacts.restore_weights(model, artifacts.load_checkpoint(best_path), best_path)
            artifacts.save_torch(run_dir / artifacts.HEAD_FILE, model.head.state_dict())
            test_metrics = evaluate(model, test_split, splits.label_names, config.training.eval_batch_size,
                                    device, precision)
            metrics.update(
                status="completed",
                test_score=test_metrics[config.training.metric],
                test_metrics=test_metrics,
                freeze_proof={key: proof[key] for key in ("backbone_changed", "consistent_with_config", "head_changed")},
            )
            log_event("test", best_epoch=outcome.best_epoch, test_score=metrics["test_score"],
                      test_accuracy=test_metrics["accuracy"], test_macro_f1=test_metrics["macro_f1"])
            (run_dir / RESUME_FILE).unlink(missing_ok=True)  # a completed run cannot be resumed
        except BaseException as error:
            if is_out_of_memory(error):
                error = out_of_memory(config, "during training", str(error).splitlines()[0])
            interrupted = isinstance(error, KeyboardInterrupt)
            metrics["status"] = "interrupted" if interrupted else "failed"
            metrics["optimizer_steps"] = outcome.steps  # the epochs' figures are in since each epoch's end
            if interrupted:
                if outcome.steps > 0:  # signals wait for a step to complete: these are its weights
                    save_model(artifacts.FINAL_MODEL_FILE, len(outcome.history) + 1, outcome.steps)
                log_event("interrupted", level=logging.WARNING, signal=str(error) or "SIGINT", step=outcome.steps,
                          message="stopped; files written so far are complete. Continue with: finetune train "
                                  f"--resume {run_dir}")
            else:
                metrics["error"] = f"{type(error).__name__}: {error}"
                log_event("failed", level=logging.ERROR, error=metrics["error"])
            if isinstance(error, (UserInputError, KeyboardInterrupt)):
                error.run_dir = run_dir  # the CLI names it: what the run wrote, and what --resume continues
            raise error from None
        finally:
            metrics["wall_time_s"] = time.perf_counter() - started
            metrics["peak_memory_mb"] = peak_memory_mb(device)
            artifacts.write_json(run_dir / artifacts.METRICS_FILE, metrics)
            run_lock.release(run_dir)
            write_summaries(run_dir, config, metrics, tensorboard)
        log_event("done", run_dir=run_dir, wall_time_s=metrics["wall_time_s"],
                  **{f"peak_{kind}_mb": value for kind, value in metrics["peak_memory_mb"].items()})
    return run_dir


def write_summaries(
    run_dir: Path, config: Config, metrics: dict[str, Any], tensorboard: TensorBoardHandler | None
) -> None:
    """curves.png, report.html and TensorBoard's hparams, from what the run got to. Also after a failure:
    a problem here is logged, never raised, so it cannot hide the run's own error."""
    try:
        if tensorboard is not None:
            tensorboard.write_hparams(config.to_plain(), metrics)
        write_run_report(run_dir)
    except OSError as error:
        log_event("warning", level=logging.WARNING, message=f"report not written: {error}")


def training_inputs(
    prepared: PreparedRun,
) -> tuple[list[TokenizedSplit] | list[FeatureSplit], dict[str, str]]:
    """train, val and test as the training loop takes them, and the feature cache's status per split (empty
    without the cache): cached features with a frozen backbone, token ids otherwise."""
    if not prepared.uses_feature_cache:
        return [prepared.tokenized[name] for name in SPLIT_NAMES], {}
    inputs = cached_feature_splits(prepared)
    return [inputs[name][0] for name in SPLIT_NAMES], {name: status for name, (_, status) in inputs.items()}


def cached_feature_splits(prepared: PreparedRun) -> dict[str, tuple[FeatureSplit, str]]:
    """Each split's pooled backbone features, from the cache or computed once; with the cache status."""
    config = prepared.config
    extract = partial(extract_features, prepared.model, batch_size=config.training.eval_batch_size,
                      device=prepared.device, precision=prepared.precision)
    found = extract_missing(Path(config.output.cache_dir), prepared.feature_keys, prepared.cached_features,
                            prepared.tokenized, extract)
    result = {}
    for name, (features, status, path) in found.items():
        split = prepared.tokenized[name]
        log_event("feature_cache", split=name, status=status, examples=len(split), path=path)
        result[name] = (FeatureSplit(features, torch.tensor(split.labels), split.lengths), status)
    return result


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"process_rss": peak_process_memory_mb()}
    if device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def initial_metrics(prepared: PreparedRun) -> dict[str, Any]:
    """metrics.json as it stands before the first step; filled in as the run goes."""
    config, splits, precision = prepared.config, prepared.splits, prepared.precision
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
        "token_lengths": token_lengths(prepared),
        "tokenization": prepared.tokenization,
        "language_warning": prepared.language_warning,
        "seed": config.seed,
        "config_hash": config.fingerprint(),
        "data_files": data_fingerprints(config.data),
        "data_sources": describe_sources(config.data, config.seed),
        "code_version": code_version(),
        "device": str(prepared.device),
        "mixed_precision": {"requested": precision.requested, "used": precision.used, "reason": precision.reason},
        "processes": distributed.world().size,
        "tf32_matmul": prepared.device.type == "cuda",
        "effective_batch_size": config.effective_batch_size() * distributed.world().size,
        "optimizer_steps_per_epoch": optimizer_steps_per_epoch(len(splits.train), config.training,
                                                               distributed.world().size),
        "parameters": count_parameters(prepared.model, 0 if prepared.model.backbone is not None
                                       else prepared.backbone_parameters),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "wall_time_s": 0.0,
        "epoch_times_s": [],
        "peak_memory_mb": None,
    }


def progress_metrics(outcome: TrainingOutcome) -> dict[str, Any]:
    return {
        "best_val_score": outcome.best_val_score,
        "best_epoch": outcome.best_epoch,
        "val_metrics": outcome.best_val_metrics,
        "optimizer_steps": outcome.steps,
        "stopped_early": outcome.stopped_early,
        "epoch_times_s": [record.time_s for record in outcome.history],
        "history": [
            {"epoch": r.epoch, "train_loss": r.train_loss, "val_score": r.val_score,
             "val_accuracy": r.val_metrics["accuracy"], "val_macro_f1": r.val_metrics["macro_f1"], "time_s": r.time_s,
             "train_time_s": r.train_time_s}
            for r in outcome.history
        ],
    }


def log_run_start(prepared: PreparedRun, run_dir: Path, metrics: dict[str, Any]) -> None:
    config, training, precision = prepared.config, prepared.config.training, prepared.precision
    log_event("start", run_dir=run_dir, seed=config.seed, config_hash=metrics["config_hash"][:12],
              device=metrics["device"], backbone=config.model.backbone)
    log_event("data_sources", **describe_sources(config.data, config.seed))
    log_event("tokenization", **{f"{name}_{key}": value for name, stats in prepared.tokenization.items()
                                 for key, value in stats.items()})
    if prepared.language_warning:
        log_event("language_warning", level=logging.WARNING, message=prepared.language_warning)
    log_event("data", **{f"{name}_size": size for name, size in prepared.splits.sizes().items()},
              labels=",".join(prepared.splits.label_names), max_length=config.data.max_length,
              **{f"{name}_truncated": stats["truncated"] for name, stats in metrics["token_lengths"].items()})
    parameters = metrics["parameters"]
    log_event("setup", freeze_backbone=training.freeze_backbone, feature_cache=prepared.uses_feature_cache,
              backbone_loaded=prepared.model.backbone is not None,
              trainable_parameters=parameters["trainable"], total_parameters=parameters["total"],
              batch_size=training.batch_size, gradient_accumulation_steps=training.gradient_accumulation_steps,
              effective_batch_size=metrics["effective_batch_size"],
              steps_per_epoch=metrics["optimizer_steps_per_epoch"], epochs=training.epochs)
    if precision.reason:
        log_event("precision_fallback", level=logging.WARNING, requested=precision.requested, used=precision.used,
                  reason=precision.reason)
    else:
        log_event("precision", used=precision.used)
    defaults = type(training).model_fields
    if training.freeze_backbone:
        for key in ("encoder_learning_rate", "gradient_checkpointing"):
            if getattr(training, key) != defaults[key].default:
                log_event("warning", level=logging.WARNING,
                          message=f"training.{key} is ignored: the backbone is frozen (freeze_backbone=true)")
