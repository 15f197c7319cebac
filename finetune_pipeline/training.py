"""The training loop, written out step by step.

Words used throughout: a *micro-batch* is what goes through the model at once (batch_size
examples); an optimizer *step* happens after gradient_accumulation_steps micro-batches. `step`
always counts optimizer steps, `batch_idx` counts micro-batches within an epoch.
"""

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_scheduler

from finetune_pipeline.config import Config, TrainingConfig
from finetune_pipeline.batching import TokenizedSplit, training_batches
from finetune_pipeline.device import Precision, autocast, memory_reading
from finetune_pipeline.distributed import all_sum, my_share, progress_bar_disabled, world
from finetune_pipeline.errors import TrainingDiverged
from finetune_pipeline.evaluation import evaluate
from finetune_pipeline.faults import fault_point
from finetune_pipeline.feature_cache import FeatureSplit
from finetune_pipeline.interruption import signals_deferred
from finetune_pipeline.model import TextClassifier
from finetune_pipeline.resume import restore_rng_states, rng_states
from finetune_pipeline.run_log import log_event


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float  # mean per-example loss over the epoch
    val_metrics: dict[str, Any]
    val_score: float
    time_s: float  # the whole epoch, validation included
    train_time_s: float  # the training steps alone
    steps: int  # optimizer steps done by the end of this epoch


@dataclass
class TrainingOutcome:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_score: float = -math.inf
    best_val_metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    stopped_early: bool = False
    epochs_without_improvement: int = 0

    def as_plain(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> "TrainingOutcome":
        return cls(**{**plain, "history": [EpochRecord(**record) for record in plain["history"]]})


def build_optimizer(model: TextClassifier, training: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with the head and the encoder in separate groups, each with its own learning rate.

    Only parameters with requires_grad go in: a frozen backbone is not in the optimizer at all, so
    weight decay cannot touch it. Biases and LayerNorm weights (1-D tensors) get no weight decay.
    """
    groups = []
    for name, module, lr in (
        ("head", model.head, training.learning_rate),
        ("encoder", model.backbone, training.encoder_learning_rate),
    ):
        trainable = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        if not trainable:
            continue
        groups.append({"name": name, "lr": lr, "weight_decay": training.weight_decay,
                       "params": [p for p in trainable if p.ndim >= 2]})
        groups.append({"name": f"{name}_no_decay", "lr": lr, "weight_decay": 0.0,
                       "params": [p for p in trainable if p.ndim < 2]})
    # fused: one kernel for all parameters instead of a loop over them; measured on MiniLM on 2 CPU
    # cores, 13 ms per step instead of 78 ms, with no temporary copies of the parameters.
    device_type = groups[0]["params"][0].device.type if groups and groups[0]["params"] else "cpu"
    return torch.optim.AdamW(groups, fused=device_type in ("cpu", "cuda"))


def current_lr(optimizer: torch.optim.Optimizer, group_name: str) -> float:
    """The group's learning rate now; 0 for a group that is not trained (a frozen encoder)."""
    return next((group["lr"] for group in optimizer.param_groups if group["name"] == group_name), 0.0)


def micro_batching(train: TokenizedSplit | FeatureSplit, training: TrainingConfig) -> tuple[int, int]:
    """(examples per forward pass, forward passes per optimizer step).

    Gradient accumulation exists to save memory. On cached features a micro-batch is a few kilobytes,
    so each optimizer step runs as one fused batch of its examples instead: the same examples (batches
    are dealt per optimizer step, see training_batches) and the same loss normalisation, in one pass
    instead of gradient_accumulation_steps small ones.
    """
    if isinstance(train, FeatureSplit):
        return training.batch_size * training.gradient_accumulation_steps, 1
    return training.batch_size, training.gradient_accumulation_steps


def optimizer_steps_per_epoch(num_examples: int, training: TrainingConfig, processes: int = 1) -> int:
    """Under torchrun each step takes batch_size x gradient_accumulation_steps examples from every process."""
    micro_batches = math.ceil(num_examples / (training.batch_size * processes))
    return math.ceil(micro_batches / training.gradient_accumulation_steps)


def train_model(
    model: TextClassifier,
    train: TokenizedSplit | FeatureSplit,
    val: TokenizedSplit | FeatureSplit,
    label_names: list[str],
    config: Config,
    device: torch.device,
    precision: Precision,
    outcome: TrainingOutcome,
    on_new_best: Callable[[int, int], None],
    on_epoch_end: Callable[[TrainingOutcome], None],
    save_state: Callable[[dict[str, Any]], None] | None,
    resume_from: dict[str, Any] | None = None,
) -> TrainingOutcome:
    """Train for config.training.epochs, filling in outcome as it goes (after an interruption it says how far
    training got). on_new_best(epoch, step) saves the best model so far; save_state(state) writes a resume
    checkpoint (see resume.py), None to write none; resume_from is such a state, to continue from."""
    training = config.training
    micro_batch_size, accumulation = micro_batching(train, training)
    if accumulation != training.gradient_accumulation_steps:
        log_event("fused_micro_batches", examples_per_pass=micro_batch_size,
                  reason="cached features: a whole optimizer step fits in one pass, so accumulation saves nothing")
    processes = world()
    steps_per_epoch = optimizer_steps_per_epoch(len(train), training, processes.size)
    total_steps = steps_per_epoch * training.epochs
    checkpoint_every = config.output.checkpoint_every_steps if save_state is not None else None
    # Under torchrun, DDP sums the processes' gradients during backward. A trained backbone may hold layers
    # our forward never uses (BERT's pooler: we pool ourselves), which DDP must be told to look for.
    trained = (DistributedDataParallel(model, find_unused_parameters=not model.backbone_frozen)
               if processes.distributed else model)

    optimizer = build_optimizer(model, training)
    scheduler = get_scheduler(
        training.scheduler,
        optimizer,
        num_warmup_steps=round(training.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # Loss scaling keeps small fp16 gradients from rounding to zero; a no-op unless precision is fp16.
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_grad_scaler)
    trainable_parameters = [p for group in optimizer.param_groups for p in group["params"]]

    # Where training starts: the first micro-batch of epoch 1, or where the resume checkpoint was taken.
    start_epoch, start_batch, running = 1, 0, new_running_sums()
    if resume_from is not None:
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        scaler.load_state_dict(resume_from["scaler"])
        vars(outcome).update(vars(TrainingOutcome.from_plain(resume_from["outcome"])))
        start_epoch, start_batch, running = resume_from["epoch"], resume_from["next_batch"], resume_from["running"]
        restore_rng_states(resume_from["rng"])  # last: everything above may draw random numbers
        log_event("resumed_at", epoch=start_epoch, step=resume_from["step"], micro_batch=start_batch)
    step = outcome.steps

    def training_state(epoch: int, next_batch: int) -> dict[str, Any]:
        """Everything the next micro-batch depends on, besides the model's weights (the caller adds them)."""
        return {"epoch": epoch, "next_batch": next_batch, "step": step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_states(),
                "outcome": outcome.as_plain(), "running": {**running, "window_loss_sum": window_loss_sum.item()}}

    first_epoch = start_epoch if not outcome.stopped_early else training.epochs + 1
    for epoch in tqdm(range(first_epoch, training.epochs + 1), desc="epochs", unit="epoch",
                      disable=progress_bar_disabled()):
        model.train()
        epoch_start = time.perf_counter()
        # The same batch order in every process (seed and epoch); each process takes its share of a micro-batch.
        batches = training_batches(train.lengths, micro_batch_size * processes.size, accumulation, config.seed,
                                   epoch, training.group_by_length)
        first_batch = start_batch if epoch == start_epoch else 0
        if first_batch == 0:
            running = new_running_sums()
        # summed on the device: no sync per micro-batch
        window_loss_sum = torch.tensor(running["window_loss_sum"], device=device)
        window_start_time = time.perf_counter()
        progress = tqdm(total=steps_per_epoch, initial=first_batch // accumulation,
                        desc=f"epoch {epoch}/{training.epochs}", unit="step", leave=False,
                        disable=progress_bar_disabled())

        for batch_idx in range(first_batch, len(batches)):
            # The optimizer step this micro-batch belongs to, and how many examples that step sees.
            # The last window of an epoch may be shorter: its examples still weigh 1/(its size).
            window_first = batch_idx - batch_idx % accumulation
            window = batches[window_first : window_first + accumulation]
            examples_in_step = sum(len(micro_batch) for micro_batch in window)
            is_last_micro_batch = (batch_idx + 1) % accumulation == 0 or batch_idx + 1 == len(batches)
            indices = my_share(batches[batch_idx], processes)
            # A process left without examples (the epoch's last, short micro-batch) still joins the gradient
            # sum, with one example whose loss counts zero times.
            padding = not indices
            indices = indices or batches[batch_idx][:1]

            batch = train.batch(indices).to(device)  # token ids, or cached features with a frozen backbone
            # DDP sums gradients once per optimizer step: not on the micro-batches that only accumulate.
            accumulate_only = processes.distributed and not is_last_micro_batch
            with trained.no_sync() if accumulate_only else contextlib.nullcontext():
                with autocast(device, precision):
                    logits = batch.logits(trained)  # (batch, num_labels)
                loss_sum = F.cross_entropy(logits.float(), batch.labels, reduction="sum")
                if padding:
                    loss_sum = loss_sum * 0.0
                # Dividing each example's loss by the step's example count makes batch 2 x accumulation 4
                # compute exactly the gradient of batch 8 x accumulation 1; DDP averages the processes'
                # gradients, and the factor processes.size turns that average back into their sum.
                scaler.scale(loss_sum * processes.size / examples_in_step).backward()
            window_loss_sum += loss_sum.detach()
            running["window_examples"] += 0 if padding else len(indices)
            fault_point("micro_batch")

            if not is_last_micro_batch:
                continue
            # Once NaN or inf, the window's sum stays so: one check per optimizer step finds the first bad
            # step before its update reaches the weights (the best checkpoint so far stays usable).
            # Under torchrun every process must take the same branch: the check is agreed by all.
            if not all_finite(window_loss_sum):
                log_event("step", epoch=epoch, step=step + 1,
                          loss=window_loss_sum.item() / running["window_examples"])
                raise diverged(training, epoch, step + 1, precision)
            with signals_deferred():  # a Ctrl-C waits for the step to complete: the weights are never half-updated
                # The optimizer step, in the order that keeps fp16 correct:
                # unscale -> clip -> step -> update the scale -> zero the gradients -> next learning rate.
                if training.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable_parameters, training.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                outcome.steps = step
                progress.update(1)

                if step % training.log_every_steps == 0 or batch_idx + 1 == len(batches):
                    window_loss_total, window_examples = all_sum([window_loss_sum.item(), running["window_examples"]])
                    window_loss = window_loss_total / window_examples  # mean per example since the last line
                    elapsed = time.perf_counter() - window_start_time
                    memory_key, memory_mb = memory_reading(device)
                    log_event(
                        "step", epoch=epoch, step=step, loss=window_loss,
                        lr_head=current_lr(optimizer, "head"), lr_encoder=current_lr(optimizer, "encoder"),
                        samples_per_s=window_examples / elapsed, **{memory_key: memory_mb},
                    )
                    progress.set_postfix(loss=f"{window_loss:.4f}")
                    running["epoch_loss_sum"] += window_loss_total
                    running["epoch_examples"] += int(window_examples)
                    window_loss_sum.zero_()
                    running["window_examples"], window_start_time = 0, time.perf_counter()
                if checkpoint_every is not None and step % checkpoint_every == 0 and batch_idx + 1 < len(batches):
                    save_state(training_state(epoch, batch_idx + 1))
            fault_point("step")
        progress.close()
        train_time = time.perf_counter() - epoch_start

        val_metrics = evaluate(model, val, label_names, training.eval_batch_size, device, precision)
        val_score = val_metrics[training.metric]
        fault_point("epoch_end")
        record = EpochRecord(epoch, running["epoch_loss_sum"] / running["epoch_examples"], val_metrics, val_score,
                             time.perf_counter() - epoch_start, train_time, step)
        outcome.history.append(record)
        improved = val_score > outcome.best_val_score
        if improved:
            outcome.best_epoch, outcome.best_val_score, outcome.best_val_metrics = epoch, val_score, val_metrics
            on_new_best(epoch, step)
            outcome.epochs_without_improvement = 0
        else:
            outcome.epochs_without_improvement += 1
        log_event(
            "epoch", epoch=epoch, step=step, train_loss=record.train_loss, val_accuracy=val_metrics["accuracy"],
            val_macro_f1=val_metrics["macro_f1"], val_score=val_score, best=improved, epoch_time_s=record.time_s,
        )
        patience = training.early_stopping_patience
        outcome.stopped_early = patience is not None and outcome.epochs_without_improvement >= patience
        if outcome.stopped_early:
            log_event("early_stop", epoch=epoch, patience=patience, best_epoch=outcome.best_epoch)
        on_epoch_end(outcome)
        running = new_running_sums()
        window_loss_sum = torch.zeros((), device=device)
        if save_state is not None:
            with signals_deferred():
                save_state(training_state(epoch + 1, 0))
        if outcome.stopped_early:
            break
    return outcome


def all_finite(window_loss_sum: torch.Tensor) -> bool:
    finite = bool(torch.isfinite(window_loss_sum))
    return finite if not world().distributed else all_sum([float(not finite)])[0] == 0


def new_running_sums() -> dict[str, Any]:
    """The loss sums of an epoch so far, and of the current log window (what the log lines average)."""
    return {"epoch_loss_sum": 0.0, "epoch_examples": 0, "window_loss_sum": 0.0, "window_examples": 0}


def diverged(training: TrainingConfig, epoch: int, step: int, precision: Precision) -> TrainingDiverged:
    encoder = "" if training.freeze_backbone else f", training.encoder_learning_rate={training.encoder_learning_rate}"
    fp16 = (" Under fp16, values above 65504 overflow: training.mixed_precision \"bf16\" or \"no\" avoids that."
            if precision.used == "fp16" else "")
    return TrainingDiverged(
        f"the training loss became NaN or infinite at optimizer step {step} (epoch {epoch}); the update was not "
        f"applied. The usual cause is a learning rate too high for this model: training.learning_rate="
        f"{training.learning_rate}{encoder}. Divide it by 10 and run again; training.max_grad_norm (now "
        f"{training.max_grad_norm}) also limits each update.{fp16}"
    )
