"""One training run, start to finish, in three phases:

    prepare  check and load everything the run needs (prepare_run); nothing is written yet, so a bad input
             (config, data, backbone) leaves nothing behind
    execute  train and test (execute), the same steps in every process under torchrun
    record   train.log, metrics.json, the checkpoints, the freeze proof and the report, all through one
             RunFolder, whatever happens: a failed or interrupted run is recorded as such. Under torchrun
             rank 0 alone writes.

run_training starts a run, resume_training continues one; both go prepare -> execute.
"""

import contextlib
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers

from finetune_pipeline.core import backbone_memo
from finetune_pipeline.core.batching import InputSplit, TokenizedSplit, length_statistics, tokenize_split
from finetune_pipeline.core.config import FROZEN_BACKBONE_IGNORES, Config
from finetune_pipeline.core.data import Splits, describe_sources, load_splits
from finetune_pipeline.core.device import (
    Precision,
    allow_tf32,
    peak_process_memory_mb,
    reset_peak_process_memory,
    resolve_device,
    resolve_precision,
)
from finetune_pipeline.core.evaluation import evaluate
from finetune_pipeline.core.feature_cache import (
    FeatureSplit,
    Found,
    cache_key,
    extract_features,
    extract_missing,
    lookup_all,
)
from finetune_pipeline.core.freeze_proof import Snapshot, build_freeze_proof, fingerprint_of, snapshot
from finetune_pipeline.core.hidden_state_cache import (
    HiddenStateSplit,
    cached_hidden_states,
    estimated_bytes,
    hidden_state_key,
)
from finetune_pipeline.core.language_check import language_warning, tokenization_report
from finetune_pipeline.core.model import (
    TextClassifier,
    backbone_max_length,
    count_parameters,
    encoder_layers,
    first_trained_layer,
    load_backbone,
    load_tokenizer,
    resolve_backbone,
)
from finetune_pipeline.core.training import TrainingState, optimizer_steps_per_epoch, seed_everything, train_model
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runs.memory_check import check_fits, is_out_of_memory, out_of_memory, run_preflight
from finetune_pipeline.runs.provenance import code_version, data_fingerprints
from finetune_pipeline.runs.report import write_run_report
from finetune_pipeline.runs.resume import (
    check_resumable,
    restore_resume_checkpoint,
    resumed_step,
    save_resume_checkpoint,
)
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runs.tensorboard_log import TensorBoardHandler, open_tensorboard
from finetune_pipeline.runtime import distributed, files
from finetune_pipeline.runtime.interruption import stop_signals_handled
from finetune_pipeline.runtime.run_log import RunLogging, log_event, logger

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
    backbone_before: Snapshot  # the backbone's tensor hashes before training (remembered if it was not loaded)
    backbone_parameters: int
    feature_keys: dict[str, dict[str, Any]]  # per split; empty without the feature cache
    cached_features: Found  # what the feature cache holds for those keys
    tokenization: dict[str, dict[str, Any]]  # per split: script, tokens per word, unknown-token share
    language_warning: str | None  # when the backbone's tokenizer does not seem to know the texts' language
    first_trained_layer: int | None  # with training.train_top_layers: the layers from here up train

    @property
    def uses_feature_cache(self) -> bool:
        return self.config.training.uses_feature_cache

    @property
    def backbone_sha256(self) -> str:
        return fingerprint_of(self.backbone_before.hashes)


def prepare_run(config: Config, dry_run: bool = False) -> PreparedRun:
    """Check and load everything the run needs; a dry run loads the weights in any case and writes nothing.

    A frozen run whose features are all in the feature cache does not load the backbone's weights (nor
    import the model code): the cache key needs only the weights' fingerprint, remembered in the cache
    folder (backbone_memo), and training needs only the head.
    """
    device = resolve_device(config.training.device)
    processes = distributed.world()
    if device.type == "cuda" and processes.distributed:
        device = torch.device("cuda", processes.local_rank)  # under torchrun, one GPU per process
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
    first_trained = first_trained_layer(config.training.train_top_layers, backbone_config, config.model.backbone)
    examples = dict(zip(SPLIT_NAMES, (splits.train, splits.val, splits.test), strict=True))
    tokenized = {name: tokenize_split(split, splits.label_names, tokenizer, config.data.max_length)
                 for name, split in examples.items()}
    tokenization = tokenization_report(examples, tokenized, tokenizer)

    cache_dir, location = Path(config.output.cache_dir), resolve_backbone(config.model.backbone)
    remembered = backbone_memo.recall(cache_dir, location) if config.training.uses_feature_cache else None
    keys, found = look_up_features(config, tokenized, remembered.sha256, precision, device) if remembered else ({}, {})
    all_cached = remembered is not None and all(features is not None for features, _, _ in found.values())

    backbone = None if all_cached and not dry_run else load_backbone(config.model.backbone)
    if backbone is None:
        backbone_before = Snapshot(remembered.tensor_hashes, original=dict)
        backbone_parameters = remembered.parameters
    else:
        backbone_before = snapshot(backbone, reload_original=lambda: load_backbone(config.model.backbone).state_dict())
        backbone_parameters = sum(parameter.numel() for parameter in backbone.parameters())
        if config.training.uses_feature_cache and not dry_run:
            if processes.is_main:
                backbone_memo.remember(cache_dir, location,
                                       backbone_memo.BackboneFingerprint(backbone_before.hashes, backbone_parameters))
            if remembered is None or remembered.tensor_hashes != backbone_before.hashes:
                keys, found = look_up_features(config, tokenized, fingerprint_of(backbone_before.hashes), precision,
                                               device)

    # Seeded after loading: the head starts the same whether or not the backbone was loaded.
    seed_everything(config.seed)  # python, numpy and torch RNGs
    model = TextClassifier(backbone, backbone_config, config.model, len(splits.label_names))
    if config.training.freeze_backbone:
        model.freeze_backbone()
    else:
        if first_trained is not None:
            model.freeze_below(first_trained)
        if config.model.lora is not None:  # after the head: its initial weights do not depend on LoRA
            model.add_lora(config.model.lora, first_trained)
        if config.training.gradient_checkpointing:
            enable_activation_checkpointing(model.backbone)
    return PreparedRun(config, device, precision, splits, model.to(device), tokenized, backbone_before,
                       backbone_parameters, keys, found, tokenization,
                       language_warning(tokenization, config.model.backbone), first_trained)


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
    with distributed.process_group(resolve_device(config.training.device).type):
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
        "backbone": describe_backbone_use(prepared),
        "effective_batch_size": config.effective_batch_size(),
        "optimizer_steps_per_epoch": steps_per_epoch,
        "optimizer_steps_total": steps_per_epoch * config.training.epochs,
        "preflight": preflight.as_dict(),
        "fits_in_memory": preflight.predicted_peak_mb <= preflight.available_mb,
    }


def describe_backbone_use(prepared: PreparedRun) -> str:
    """What trains, what is frozen and what is cached, in a line: 'frozen, features computed once and cached'."""
    training, first, lora = prepared.config.training, prepared.first_trained_layer, prepared.config.model.lora
    if training.freeze_backbone:
        return "frozen, features computed once and cached" if training.uses_feature_cache else "frozen, run every step"
    adapters = (f"LoRA adapters (r {lora.r}, alpha {lora.alpha:g}) on {', '.join(lora.target_modules)} of the "
                f"{'top layers' if first is not None else 'layers'}, the backbone's own weights frozen"
                if lora is not None else "")
    if first is None:
        return adapters or "trained"
    layers = len(encoder_layers(prepared.model.backbone))
    trained = (f"layers {first}-{layers - 1} of {layers} trained" + (f" ({adapters})" if adapters else "")
               + ", the embeddings" + (f" and layers 0-{first - 1}" if first else "") + " frozen")
    if not training.uses_hidden_state_cache:
        return f"{trained}, run every step"
    size = sum(estimated_bytes(split, prepared.model.backbone.config.hidden_size) for split in prepared.tokenized.values())
    return (f"{trained}; the hidden states entering layer {first} computed once and cached in "
            f"{prepared.config.output.cache_dir}: about {size / 2**20:,.0f} MiB on disk")


def token_lengths(prepared: PreparedRun) -> dict[str, dict[str, float]]:
    return {name: length_statistics(split, prepared.config.data.max_length) for name, split in prepared.tokenized.items()}


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
        metrics.resumed_from_steps = [*metrics.resumed_from_steps, from_step]
        if checkpoint is None:  # starting over: the setup as measured now, the origin and the sessions kept
            metrics = initial_metrics(prepared, metrics.as_json())
        return execute(prepared, RunFolder(run_dir, prepared, metrics, started), checkpoint)


def execute(prepared: PreparedRun, run: "RunFolder", checkpoint: dict[str, Any] | None = None) -> Path:
    """Train and test, the same steps in every process (they meet in every gradient sum, extraction and
    evaluation); run records it all, whatever happens. checkpoint: resume.pt's contents, to continue from."""
    config, model, device, precision = prepared.config, prepared.model, prepared.device, prepared.precision
    label_names, training = prepared.splits.label_names, prepared.config.training
    state = TrainingState.start(model, training, len(prepared.splits.train), device, precision)
    with run.recording(state, resuming=checkpoint is not None):
        head_before = snapshot(model.head)  # the seeded initial head, also when resuming
        adapters_before = snapshot(model.adapter_state())  # and the seeded initial LoRA adapters
        train_split, val_split, test_split = training_inputs(prepared, run.metrics)
        check_memory(prepared, train_split, run.metrics)
        if checkpoint is not None:
            restore_resume_checkpoint(checkpoint, model, state, run.path)
        train_model(model, train_split, val_split, label_names, config, device, precision, state, run)
        run.save_model(artifacts.FINAL_MODEL_FILE, state.history[-1].epoch, state.step)
        proof = build_freeze_proof(prepared.backbone_before, head_before, adapters_before, model,
                                   training.freeze_backbone, prepared.first_trained_layer)
        run.write_freeze_proof(proof)
        run.load_best_model(model)  # test once, with the best checkpoint
        test_metrics = evaluate(model, test_split, label_names, training.eval_batch_size, device, precision)
        run.completed(test_metrics, proof)
    return run.path


def check_memory(prepared: PreparedRun, train: InputSplit, metrics: RunMetrics) -> None:
    """Stop before training when the heaviest step is predicted not to fit (the preflight goes into metrics).

    With the feature cache the heaviest step is extraction, whose first batch is its longest: it fails fast by
    itself, and a cache hit needs no backbone pass at all. Extracting cached hidden states fails as fast; the
    preflight then tries a training step on them.
    """
    if prepared.uses_feature_cache:
        return
    preflight = run_preflight(prepared.model, train, prepared.config, prepared.device, prepared.precision,
                              uses_feature_cache=False)
    metrics.preflight = preflight.as_dict()
    log_event("preflight", **metrics.preflight)
    check_fits(preflight, prepared.config)


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
        if not distributed.world().is_main:
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
        """Record why the run stopped; returns the error to raise (out of memory, explained)."""
        if is_out_of_memory(error):
            error = out_of_memory(self.prepared.config, "during training", str(error).splitlines()[0])
        interrupted = isinstance(error, KeyboardInterrupt)
        self.metrics.record(status="interrupted" if interrupted else "failed",
                            optimizer_steps=state.step)  # the epochs' figures are in since each epoch's end
        if interrupted:
            if state.step > 0:  # signals wait for a step to complete: these are its weights
                self.save_model(artifacts.FINAL_MODEL_FILE, len(state.history) + 1, state.step)
            log_event("interrupted", level=logging.WARNING, signal=str(error) or "SIGINT", step=state.step,
                      message=f"stopped; files written so far are complete. Continue with: finetune train --resume "
                              f"{self.path}")
        else:
            self.metrics.error = f"{type(error).__name__}: {error}"
            log_event("failed", level=logging.ERROR, error=self.metrics.error)
        if isinstance(error, (UserInputError, KeyboardInterrupt)):
            error.run_dir = self.path  # the CLI names it: what the run wrote, and what --resume continues
        return error

    def load_best_model(self, model: TextClassifier) -> None:
        """The best checkpoint's weights into model, in every process: rank 0 reads best_model.pt back from disk
        (which also proves that the file loads) and sends it to the others."""
        path = self.path / artifacts.BEST_MODEL_FILE
        payload = files.load_checkpoint(path) if distributed.world().is_main else None
        artifacts.restore_weights(model, distributed.broadcast_from_main(payload), path)

    # The writes, made by rank 0 alone.

    @distributed.main_process_only
    def start(self, resuming: bool) -> None:
        run_lock.acquire(self.path)
        self.metrics.status = "running"
        if not resuming:
            log_run_start(self.prepared, self.path, self.metrics)
        if self.metrics.resumed_from_steps:
            log_event("resume", step=self.metrics.resumed_from_steps[-1], checkpoint=self.path / artifacts.RESUME_FILE
                      if resuming else "none yet: starting over")
        self.metrics.write(self.path / artifacts.METRICS_FILE)

    @distributed.main_process_only
    def record_epoch(self, state: TrainingState) -> None:
        self.metrics.record(**progress_metrics(state), wall_time_s=time.perf_counter() - self.started)
        self.metrics.write(self.path / artifacts.METRICS_FILE)

    @distributed.main_process_only
    def save_model(self, file_name: str, epoch: int, step: int) -> None:
        files.save_torch(self.path / file_name, self.model_payload(epoch, step))

    @distributed.main_process_only
    def save_best_model(self, state: TrainingState) -> None:
        self.save_model(artifacts.BEST_MODEL_FILE, state.epoch, state.step)

    @distributed.main_process_only
    def save_resume_checkpoint(self, state: TrainingState) -> None:
        if distributed.world().distributed:
            return  # resuming a torchrun run is not supported: each process has its own random state
        save_resume_checkpoint(self.path, self.model_payload(state.epoch, state.step), state)

    @distributed.main_process_only
    def write_freeze_proof(self, proof: dict[str, Any]) -> None:
        files.write_json(self.path / artifacts.FREEZE_PROOF_FILE, proof)
        log_event("freeze_proof", backbone_changed=proof["backbone_changed"],
                  consistent_with_config=proof["consistent_with_config"], head_changed=proof["head_changed"],
                  level=logging.INFO if proof["consistent_with_config"] else logging.WARNING)

    @distributed.main_process_only
    def completed(self, test_metrics: dict[str, Any], proof: dict[str, Any]) -> None:
        files.save_torch(self.path / artifacts.HEAD_FILE, self.prepared.model.head.state_dict())  # the best head
        self.metrics.record(
            status="completed",
            test_score=test_metrics[self.prepared.config.training.metric],
            test_metrics=test_metrics,
            freeze_proof={key: proof[key] for key in ("backbone_changed", "consistent_with_config", "head_changed")},
        )
        log_event("test", best_epoch=self.metrics.best_epoch, test_score=self.metrics.test_score,
                  test_accuracy=test_metrics["accuracy"], test_macro_f1=test_metrics["macro_f1"])
        (self.path / artifacts.RESUME_FILE).unlink(missing_ok=True)  # a completed run cannot be resumed

    @distributed.main_process_only
    def finish(self) -> None:
        """metrics.json as the run ends, the lock released, then curves.png, report.html and TensorBoard's
        hparams, and for a completed run the `done` line. Also after a failure: a problem with the report is
        logged, never raised, so that it cannot hide the run's own error."""
        self.metrics.record(wall_time_s=time.perf_counter() - self.started,
                            peak_memory_mb=peak_memory_mb(self.prepared.device))
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
        return artifacts.checkpoint_payload(prepared.model, prepared.splits.label_names, prepared.config, epoch, step,
                                            prepared.backbone_before.hashes)


@distributed.main_process_only
def new_run_dir(config: Config, model: TextClassifier) -> Path:
    """Check the disk has room for the checkpoints, make the folder, write config.json into it."""
    artifacts.check_free_space(config.output.artifacts_root, artifacts.expected_artifact_bytes(model, config))
    run_dir = artifacts.create_run_dir(config.output.artifacts_root)
    files.write_json(run_dir / artifacts.CONFIG_FILE, config.to_plain())
    return run_dir


def training_inputs(prepared: PreparedRun, metrics: RunMetrics) -> list[InputSplit]:
    """train, val and test as the training loop takes them: cached features with a frozen backbone, cached hidden
    states with train_top_layers (the cache's status per split goes into metrics), token ids otherwise."""
    if prepared.uses_feature_cache:
        inputs = cached_feature_splits(prepared)
        metrics.feature_cache = {name: status for name, (_, status) in inputs.items()}
    elif prepared.config.training.uses_hidden_state_cache:
        inputs = cached_hidden_state_splits(prepared)
        metrics.hidden_state_cache = {name: status for name, (_, status) in inputs.items()}
    else:
        return [prepared.tokenized[name] for name in SPLIT_NAMES]
    return [inputs[name][0] for name in SPLIT_NAMES]


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


def cached_hidden_state_splits(prepared: PreparedRun) -> dict[str, tuple[HiddenStateSplit, str]]:
    """Each split's hidden states entering the first trained layer, from the cache or computed once."""
    config, result = prepared.config, {}
    for name, split in prepared.tokenized.items():
        key = hidden_state_key(split, config.model.backbone, prepared.backbone_sha256, prepared.first_trained_layer,
                               prepared.precision, prepared.device)
        states, status, path = cached_hidden_states(prepared.model, split, key, Path(config.output.cache_dir),
                                                    config.training.eval_batch_size, prepared.device, prepared.precision)
        log_event("hidden_state_cache", split=name, status=status, examples=len(split), layer=key["layer"],
                  mib=states.states.nbytes / 2**20, path=path)
        result[name] = (states, status)
    return result


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"process_rss": peak_process_memory_mb()}
    if device.type == "cuda":
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def initial_metrics(prepared: PreparedRun, kept: dict[str, Any]) -> RunMetrics:
    """metrics.json as it stands before the first step, over the fields in kept (where the config came from;
    when a resumed run starts over, what its earlier sessions recorded); filled in as the run goes."""
    config, splits, precision = prepared.config, prepared.splits, prepared.precision
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
        "backbone_sha256": prepared.backbone_sha256,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "wall_time_s": 0.0,
        "epoch_times_s": [],
        "peak_memory_mb": None,
    })


def progress_metrics(state: TrainingState) -> dict[str, Any]:
    return {
        "best_val_score": state.best_val_score,
        "best_epoch": state.best_epoch,
        "val_metrics": state.best_val_metrics,
        "optimizer_steps": state.step,
        "stopped_early": state.stopped_early,
        "epoch_times_s": [record.time_s for record in state.history],
        "history": [
            {"epoch": r.epoch, "train_loss": r.train_loss, "val_score": r.val_score,
             "val_accuracy": r.val_metrics["accuracy"], "val_macro_f1": r.val_metrics["macro_f1"], "time_s": r.time_s,
             "train_time_s": r.train_time_s}
            for r in state.history
        ],
    }


def log_run_start(prepared: PreparedRun, run_dir: Path, metrics: RunMetrics) -> None:
    config, training, precision = prepared.config, prepared.config.training, prepared.precision
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
    parameters = metrics.parameters or {}
    log_event("setup", freeze_backbone=training.freeze_backbone, feature_cache=prepared.uses_feature_cache,
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
    if training.freeze_backbone:
        for key in sorted(FROZEN_BACKBONE_IGNORES):
            name = key.removeprefix("training.")
            if getattr(training, name) != defaults[name].default:
                log_event("warning", level=logging.WARNING,
                          message=f"{key} is ignored: the backbone is frozen (freeze_backbone=true)")
