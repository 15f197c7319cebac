"""The training loop, written out step by step.

Words used throughout: a *micro-batch* is what goes through the model at once (batch_size examples); an
optimizer *step* happens after gradient_accumulation_steps micro-batches. `step` always counts optimizer
steps; `micro_step` counts the micro-batches within one step.

    train_model
        for each epoch:
            for each optimizer step of the epoch:
                for each micro-batch of the step:   forward_backward
                optimizer_step, then log_window and a resume checkpoint when they are due
            end_of_epoch: validation, the best model, early stopping, the epoch's checkpoint

Everything the loop changes besides the weights lives in one TrainingState, which is also exactly what a
resume checkpoint stores (resume.py).
"""

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from finetune_pipeline.core.batching import InputSplit, training_steps
from finetune_pipeline.core.config import Config, TrainingConfig
from finetune_pipeline.core.device import Placement, Precision, autocast, memory_reading
from finetune_pipeline.core.evaluation import evaluate
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Task
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import TrainingDiverged
from finetune_pipeline.runtime.distributed import all_sum, my_share, progress_bar_disabled
from finetune_pipeline.runtime.faults import fault_point
from finetune_pipeline.runtime.interruption import signals_deferred
from finetune_pipeline.runtime.run_log import log_event


class RunRecorder(Protocol):
    """What the loop asks the run to keep (runs/run.py's RunFolder, which writes in rank 0 only): the loop
    never knows where or how."""

    def save_resume_checkpoint(self, state: "TrainingState") -> None: ...

    def save_best_model(self, state: "TrainingState") -> None: ...

    def record_epoch(self, state: "TrainingState") -> None: ...


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
class RunningLoss:
    """Summed per-example losses: of the log window (what each `step` line averages) and of the epoch so far."""

    window_sum: torch.Tensor  # on the device: adding a micro-batch's loss to it needs no CPU-GPU sync
    window_examples: int = 0
    epoch_sum: float = 0.0
    epoch_examples: int = 0
    window_started: float = field(default_factory=time.perf_counter)  # for samples_per_s; not part of the state

    @classmethod
    def zero(cls, device: torch.device) -> "RunningLoss":
        return cls(torch.zeros((), device=device))


@dataclass
class TrainingState:
    """Everything the next micro-batch depends on besides the model's weights. A resume checkpoint is
    exactly this (state_dict) and the weights, so a resumed run goes on bit for bit."""

    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # loss scaling, which keeps small fp16 gradients from rounding to zero
    losses: RunningLoss
    epoch: int = 1  # the epoch in progress
    step_in_epoch: int = 0  # its optimizer steps done: checkpoints are taken between steps, so it resumes here
    step: int = 0  # optimizer steps done, all epochs together
    best_epoch: int = 0
    best_val_score: float | None = None  # None until the first validation
    best_val_metrics: dict[str, Any] = field(default_factory=dict)
    epochs_without_improvement: int = 0  # early stopping's count
    stopped_early: bool = False
    history: list[EpochRecord] = field(default_factory=list)

    @classmethod
    def start(cls, model: TextClassifier, training: TrainingConfig, train_examples: int,
              placement: Placement) -> "TrainingState":
        """Epoch 1, step 0: a new optimizer, learning-rate schedule and loss scaler."""
        optimizer = build_optimizer(model, training)
        total_steps = optimizer_steps_per_epoch(train_examples, training, placement.processes.size) * training.epochs
        scheduler = learning_rate_schedule(training.scheduler, optimizer, round(training.warmup_ratio * total_steps),
                                           total_steps)
        # loss scaling: a no-op unless fp16
        scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.precision.needs_grad_scaler)
        return cls(optimizer, scheduler, scaler, RunningLoss.zero(placement.device))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain types only (torch.load with weights_only=True reads them), random generators included:
        dropout draws from them."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step,
            "best_epoch": self.best_epoch, "best_val_score": self.best_val_score,
            "best_val_metrics": self.best_val_metrics,
            "epochs_without_improvement": self.epochs_without_improvement, "stopped_early": self.stopped_early,
            "history": [asdict(record) for record in self.history],
            "losses": {"window_sum": self.losses.window_sum.item(), "window_examples": self.losses.window_examples,
                       "epoch_sum": self.losses.epoch_sum, "epoch_examples": self.losses.epoch_examples},
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.step_in_epoch, self.step = saved["epoch"], saved["step_in_epoch"], saved["step"]
        self.best_epoch, self.best_val_score = saved["best_epoch"], saved["best_val_score"]
        self.best_val_metrics = saved["best_val_metrics"]
        self.epochs_without_improvement = saved["epochs_without_improvement"]
        self.stopped_early = saved["stopped_early"]
        self.history = [EpochRecord(**record) for record in saved["history"]]
        losses = saved["losses"]
        self.losses = RunningLoss(torch.tensor(losses["window_sum"], device=self.losses.window_sum.device),
                                  losses["window_examples"], losses["epoch_sum"], losses["epoch_examples"])
        restore_rng_states(saved["rng"])  # last: loading the others may draw random numbers


def train_model(
    model: TextClassifier,
    train: InputSplit,
    val: InputSplit,
    task: Task,
    config: Config,
    placement: Placement,
    state: TrainingState,
    run: RunRecorder,
) -> None:
    """Train from where state is (a new one: epoch 1, step 0) to the last epoch or early stopping, updating state
    as it goes: after an interruption it says how far training got. run writes the best model, the epochs'
    metrics and the resume checkpoints (in rank 0 only)."""
    training, mode = config.training, TrainingMode.of(config)
    micro_batch_size, accumulation = micro_batching(mode, training)
    if accumulation != training.gradient_accumulation_steps:
        log_event("fused_micro_batches", examples_per_pass=micro_batch_size,
                  reason="cached features: a whole optimizer step fits in one pass, so accumulation saves nothing")
    if state.step > 0:  # continuing from a resume checkpoint
        log_event("resumed_at", epoch=state.epoch, step=state.step, micro_batch=state.step_in_epoch * accumulation)
    processes = placement.processes
    # Under torchrun, DDP sums the processes' gradients during backward. A trained backbone may hold layers
    # our forward never uses (BERT's pooler: we pool ourselves), which DDP must be told to look for.
    trained = (DistributedDataParallel(model, find_unused_parameters=not model.backbone_frozen)
               if processes.distributed else model)

    while state.epoch <= training.epochs and not state.stopped_early:
        model.train()
        epoch_started = state.losses.window_started = time.perf_counter()  # samples_per_s counts from here too
        # The same steps in every process (seed and epoch); each process takes its share of each micro-batch.
        steps = training_steps(train.lengths, micro_batch_size * processes.size, accumulation, config.seed,
                               state.epoch, training.group_by_length)
        progress = tqdm(steps[state.step_in_epoch :], total=len(steps), initial=state.step_in_epoch, unit="step",
                        desc=f"epoch {state.epoch}/{training.epochs}", leave=False, disable=progress_bar_disabled())
        for micro_batches in progress:
            examples_in_step = sum(len(micro_batch) for micro_batch in micro_batches)
            for micro_step, micro_batch in enumerate(micro_batches):
                with accumulating(trained, last_micro_batch=micro_step == len(micro_batches) - 1):
                    forward_backward(trained, train, micro_batch, examples_in_step, task, state, placement)
                fault_point("micro_batch")
            check_finite(state, config, placement)  # raises TrainingDiverged before a NaN reaches the weights
            with signals_deferred():  # a Ctrl-C waits for the step to complete: the weights are never half-updated
                optimizer_step(state, training.max_grad_norm)
                if due(state.step, training.log_every_steps) or state.step_in_epoch == len(steps):
                    log_window(state, placement, progress)
                if due(state.step, config.output.checkpoint_every_steps) and state.step_in_epoch < len(steps):
                    run.save_resume_checkpoint(state)  # the epoch's last step has the epoch's own checkpoint
            fault_point("step")
        end_of_epoch(model, val, task, config, placement, state, run, epoch_started)


def accumulating(
    model: TextClassifier | DistributedDataParallel, last_micro_batch: bool
) -> contextlib.AbstractContextManager:
    """Under torchrun, DDP sums the gradients once per optimizer step: not on the micro-batches that only
    accumulate (no_sync), only in the backward pass of the step's last one."""
    if isinstance(model, DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    return contextlib.nullcontext()


def forward_backward(
    model: TextClassifier | DistributedDataParallel, split: InputSplit, micro_batch: list[int],
    examples_in_step: int, task: Task, state: TrainingState, placement: Placement,
) -> None:
    """One micro-batch: forward, loss, backward. Its gradient adds to the step's, its loss to the log window's."""
    processes = placement.processes
    indices = my_share(micro_batch, processes)
    # A process left without examples (the epoch's last, short micro-batch) still joins the gradient sum, with
    # one example whose loss counts zero times.
    padding = not indices
    indices = indices or micro_batch[:1]
    batch = split.batch(indices).to(placement.device)  # token ids, cached features or cached hidden states
    with autocast(placement.device, placement.precision):
        logits = batch.logits(model)  # (batch, num_labels)
    loss_sum = task.loss_sum(logits, batch.labels)
    if padding:
        loss_sum = loss_sum * 0.0
    # Dividing each example's loss by the step's example count makes batch 2 x accumulation 4 compute exactly
    # the gradient of batch 8 x accumulation 1 (the last step of an epoch may be shorter: its examples still
    # weigh 1/(its size)); DDP averages the processes' gradients, and the factor processes.size turns that
    # average back into their sum.
    state.scaler.scale(loss_sum * processes.size / examples_in_step).backward()
    state.losses.window_sum += loss_sum.detach()
    state.losses.window_examples += 0 if padding else len(indices)


def check_finite(state: TrainingState, config: Config, placement: Placement) -> None:
    """Once NaN or inf, the window's loss sum stays so: one check per optimizer step finds the first bad step
    before its update reaches the weights (the best checkpoint so far stays usable). Under torchrun every
    process must take the same branch: the check is agreed by all."""
    window_sum = state.losses.window_sum
    finite = bool(torch.isfinite(window_sum))
    if placement.processes.distributed:
        finite = all_sum([float(not finite)])[0] == 0
    if not finite:
        log_event("step", epoch=state.epoch, step=state.step + 1, loss=window_sum.item() / state.losses.window_examples)
        raise diverged(config, state.epoch, state.step + 1, placement.precision)


def optimizer_step(state: TrainingState, max_grad_norm: float | None) -> None:
    """The update, in the order that keeps fp16 correct: unscale -> clip -> step -> update the scale -> zero
    the gradients -> next learning rate."""
    optimizer, scaler = state.optimizer, state.scaler
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                       max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.step += 1
    state.step_in_epoch += 1


def due(step: int, every: int | None) -> bool:
    return every is not None and step % every == 0


def log_window(state: TrainingState, placement: Placement, progress: tqdm) -> None:
    """One `step` line: the mean loss per example since the last one (of every process), the learning rates,
    the speed and the memory; then the window starts over, its sums added to the epoch's."""
    losses = state.losses
    window_loss_sum, window_examples = all_sum([losses.window_sum.item(), losses.window_examples])
    window_loss = window_loss_sum / window_examples
    memory_key, memory_mb = memory_reading(placement.device)
    log_event(
        "step", epoch=state.epoch, step=state.step, loss=window_loss,
        lr_head=current_lr(state.optimizer, "head"), lr_encoder=current_lr(state.optimizer, "encoder"),
        samples_per_s=window_examples / (time.perf_counter() - losses.window_started), **{memory_key: memory_mb},
    )
    progress.set_postfix(loss=f"{window_loss:.4f}")
    losses.epoch_sum += window_loss_sum
    losses.epoch_examples += int(window_examples)
    losses.window_sum.zero_()
    losses.window_examples, losses.window_started = 0, time.perf_counter()


def end_of_epoch(
    model: TextClassifier, val: InputSplit, task: Task, config: Config, placement: Placement, state: TrainingState,
    run: RunRecorder, epoch_started: float,
) -> None:
    """Validate, keep the best model so far, count the epochs without improvement, record the epoch, and take
    the resume checkpoint from which the next epoch starts."""
    training = config.training
    train_time = time.perf_counter() - epoch_started
    val_metrics = evaluate(model, val, task, training.eval_batch_size, placement, fit_decision=True)
    val_score = val_metrics[training.metric]
    fault_point("epoch_end")
    record = EpochRecord(state.epoch, state.losses.epoch_sum / state.losses.epoch_examples, val_metrics, val_score,
                         time.perf_counter() - epoch_started, train_time, state.step)
    state.history.append(record)
    improved = task.is_better(val_score, state.best_val_score)
    if improved:
        state.best_epoch, state.best_val_score, state.best_val_metrics = state.epoch, val_score, val_metrics
        run.save_best_model(state)
        state.epochs_without_improvement = 0
    else:
        state.epochs_without_improvement += 1
    log_event(
        "epoch", epoch=state.epoch, step=state.step, train_loss=record.train_loss,
        **{f"val_{name}": val_metrics[name] for name in task.metric_names}, val_score=val_score, best=improved,
        epoch_time_s=record.time_s,
    )
    patience = training.early_stopping_patience
    state.stopped_early = patience is not None and state.epochs_without_improvement >= patience
    if state.stopped_early:
        log_event("early_stop", epoch=state.epoch, patience=patience, best_epoch=state.best_epoch)
    run.record_epoch(state)
    state.epoch, state.step_in_epoch, state.losses = state.epoch + 1, 0, RunningLoss.zero(placement.device)
    with signals_deferred():
        run.save_resume_checkpoint(state)


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


def learning_rate_schedule(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int,
                           total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The factor on each group's learning rate after `step` optimizer steps: a linear ramp from 0 over the warmup
    steps, then constant, linear down to 0 at the last step, or half a cosine down to 0.

    transformers' get_scheduler formulas, written out as it writes them (the same floats): importing
    transformers.optimization loads its Trainer's helpers (and peft, where installed), seconds that a run on
    cached features does not need."""
    shapes = {"linear": linear_decay, "cosine": cosine_decay, "constant": constant, "constant_with_warmup": constant}
    warmup = 0 if name == "constant" else warmup_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(shapes[name], warmup_steps=warmup,
                                                                total_steps=total_steps))


def warming_up(step: int, warmup_steps: int) -> float | None:
    return float(step) / float(max(1, warmup_steps)) if step < warmup_steps else None


def linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    ramp = warming_up(step, warmup_steps)
    return ramp if ramp is not None else max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))


def cosine_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    ramp = warming_up(step, warmup_steps)
    if ramp is not None:
        return ramp
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def constant(step: int, warmup_steps: int, total_steps: int) -> float:
    ramp = warming_up(step, warmup_steps)
    return ramp if ramp is not None else 1.0


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's random generators (CUDA's included), as transformers.set_seed does."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def current_lr(optimizer: torch.optim.Optimizer, group_name: str) -> float:
    """The group's learning rate now; 0 for a group that is not trained (a frozen encoder)."""
    return next((group["lr"] for group in optimizer.param_groups if group["name"] == group_name), 0.0)


def micro_batching(mode: TrainingMode, training: TrainingConfig) -> tuple[int, int]:
    """(examples per forward pass, forward passes per optimizer step).

    Gradient accumulation exists to save memory. On cached features a micro-batch is a few kilobytes,
    so each optimizer step runs as one fused batch of its examples instead: the same examples (batches
    are dealt per optimizer step, see training_steps) and the same loss normalisation, in one pass
    instead of gradient_accumulation_steps small ones.
    """
    if mode.fuses_micro_batches:
        return training.batch_size * training.gradient_accumulation_steps, 1
    return training.batch_size, training.gradient_accumulation_steps


def optimizer_steps_per_epoch(num_examples: int, training: TrainingConfig, processes: int = 1) -> int:
    """Under torchrun each step takes batch_size x gradient_accumulation_steps examples from every process."""
    micro_batches = math.ceil(num_examples / (training.batch_size * processes))
    return math.ceil(micro_batches / training.gradient_accumulation_steps)


def rng_states() -> dict[str, Any]:
    """Every random generator a run touches, as tensors and plain types (weights_only can read them)."""
    version, mt_state, gauss_next = random.getstate()
    _, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss_next],
        "numpy": [torch.from_numpy(numpy_keys.astype(np.int64)), numpy_position, numpy_has_gauss, numpy_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    version, mt_state, gauss_next = states["python"]
    random.setstate((version, tuple(mt_state), gauss_next))
    numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = states["numpy"]
    np.random.set_state(("MT19937", numpy_keys.numpy().astype(np.uint32), numpy_position, numpy_has_gauss,
                         numpy_gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def diverged(config: Config, epoch: int, step: int, precision: Precision) -> TrainingDiverged:
    training = config.training
    encoder = (f", training.encoder_learning_rate={training.encoder_learning_rate}"
               if TrainingMode.of(config).trains_backbone else "")
    fp16 = (" Under fp16, values above 65504 overflow: training.mixed_precision \"bf16\" or \"no\" avoids that."
            if precision.used == "fp16" else "")
    return TrainingDiverged(
        f"the training loss became NaN or infinite at optimizer step {step} (epoch {epoch}); the update was not "
        f"applied. The usual cause is a learning rate too high for this model: training.learning_rate="
        f"{training.learning_rate}{encoder}. Divide it by 10 and run again; training.max_grad_norm (now "
        f"{training.max_grad_norm}) also limits each update.{fp16}"
    )
