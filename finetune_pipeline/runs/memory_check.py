"""Will the run fit in memory? Find out in seconds, before the first real step, and say what to change.

The preflight pushes the heaviest batch the run will ever see through the model (forward and
backward, as training does) and reads the memory peak. Optimizer state, which appears only at the
first optimizer step, is added from the parameter count. A run that cannot fit stops here with the
knobs that would make it fit, instead of crashing after an hour.
"""

import json
import shlex
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from finetune_pipeline.core.batching import InputSplit, evaluation_batches
from finetune_pipeline.core.config import Config
from finetune_pipeline.core.device import Placement, autocast, peak_process_memory_mb
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Task
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import OutOfMemory

BYTES_PER_FLOAT32 = 4
ADAMW_STATES_PER_PARAMETER = 2  # exp_avg and exp_avg_sq


@dataclass
class Preflight:
    what: str  # which step was tried
    examples: int
    padded_length: int
    peak_mb: float  # measured during the step: process RSS on CPU, allocated CUDA memory on GPU
    optimizer_state_mb: float  # AdamW's two states per trained parameter, not yet allocated
    predicted_peak_mb: float
    available_mb: float  # what the device has (free RAM plus what this process holds; or GPU total)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in message for sign in ("can't allocate memory", "not enough memory", "out of memory")
    )


def advice(config: Config) -> str:
    training, mode = config.training, TrainingMode.of(config)
    lines = [
        f"data.max_length={config.data.max_length}: fewer tokens per text need less memory",
        f"training.batch_size={training.batch_size}: halve it and double training.gradient_accumulation_steps "
        f"(now {training.gradient_accumulation_steps}) to keep the effective batch of {config.effective_batch_size()}",
    ]
    if mode.caches_features:
        lines.append(f"training.eval_batch_size={training.eval_batch_size}: the features are extracted in "
                     "batches of this size; halve it")
    if mode.trains_backbone:
        lines.append("training.freeze_backbone=true: no backbone gradients or optimizer state at all")
        if not mode.gradient_checkpointing:
            lines.append("training.gradient_checkpointing=true: recompute activations in the backward pass")
    if training.mixed_precision == "no":
        lines.append("training.mixed_precision=\"bf16\" (or \"fp16\" on a GPU): half-size activations")
    return "Turn one of these knobs:\n" + "\n".join(f"  - {line}" for line in lines)


def first_fix(config: Config) -> dict[str, Any]:
    """The change the rerun command makes: the first knob of the advice that applies, keeping what the run
    measures (the effective batch, the model) wherever it can."""
    training, mode = config.training, TrainingMode.of(config)
    if mode.caches_features and training.eval_batch_size > 1:
        return {"training.eval_batch_size": training.eval_batch_size // 2}
    if training.batch_size > 1:
        return {"training.batch_size": training.batch_size // 2,
                "training.gradient_accumulation_steps": training.gradient_accumulation_steps * 2}
    if mode.trains_backbone and not mode.gradient_checkpointing:
        return {"training.gradient_checkpointing": True}
    return {"data.max_length": max(config.data.max_length // 2, 8)}


def out_of_memory(config: Config, where: str, cause: str) -> OutOfMemory:
    error = OutOfMemory(f"out of memory {where}: {cause}\n{advice(config)}")
    error.fix = first_fix(config)
    return error


def add_rerun_command(error: OutOfMemory, config_file: str | None, overrides: dict[str, Any]) -> OutOfMemory:
    """Append the command that reruns this very run with the first fix: from its run folder's config.json when
    it has one (every setting included), else from the config file and --set values it was started with."""
    if error.run_dir is not None:
        command = ["finetune", "train", "--from-run", str(error.run_dir)]
    elif config_file is not None:
        command = ["finetune", "train", "--config", config_file, *set_arguments(overrides)]
    else:
        return error
    command += set_arguments(error.fix)
    error.args = (f"{error}\nRerun it with the first of them: {shlex.join(command)}",)
    return error


def set_arguments(overrides: dict[str, Any]) -> list[str]:
    """{'training.batch_size': 2} -> ['--set', 'training.batch_size=2'], values written as --set reads them."""
    def written(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return [part for key, value in overrides.items() for part in ("--set", f"{key}={written(value)}")]


def run_preflight(
    model: TextClassifier, split: InputSplit, config: Config, placement: Placement, mode: TrainingMode, task: Task,
) -> Preflight:
    """One step on the heaviest batch; the model's weights and every random generator are left as they were.

    With the feature cache, the heaviest step is the feature extraction (inference on eval_batch_size
    texts); otherwise it is a training micro-batch, forward and backward, from split: token ids, or the cached
    hidden states of train_top_layers (then the lower layers do not run).
    """
    device, precision = placement.device, placement.precision
    extraction = mode.caches_features
    batch_size = config.training.eval_batch_size if extraction else config.training.batch_size
    # the first batch of the longest-first order holds the longest texts: no batch can need more memory
    batch = split.batch(evaluation_batches(split.lengths, batch_size)[0]).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if extraction:
                with torch.inference_mode(), autocast(device, precision):
                    model.eval()
                    model.features(batch.input_ids, batch.attention_mask)
            else:
                model.train()
                with autocast(device, precision):
                    logits = batch.logits(model)
                task.loss_sum(logits, batch.labels).backward()
    except Exception as err:
        if is_out_of_memory(err):
            raise out_of_memory(config, "in the preflight step", f"{len(batch.labels)} texts padded to "
                                f"{batch.attention_mask.shape[1]} tokens did not fit ({str(err).splitlines()[0]})") from None
        raise
    finally:
        model.zero_grad(set_to_none=True)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer_state_mb = 0.0 if extraction else trainable * ADAMW_STATES_PER_PARAMETER * BYTES_PER_FLOAT32 / 2**20
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        available_mb = torch.cuda.mem_get_info(device)[1] / 2**20
    else:
        peak_mb = peak_process_memory_mb()
        available_mb = (psutil.virtual_memory().available + psutil.Process().memory_info().rss) / 2**20
    return Preflight(
        what="feature extraction (inference)" if extraction else "training micro-batch (forward + backward)",
        examples=len(batch.labels),
        padded_length=int(batch.attention_mask.shape[1]),
        peak_mb=peak_mb,
        optimizer_state_mb=optimizer_state_mb,
        predicted_peak_mb=peak_mb + optimizer_state_mb,
        available_mb=available_mb,
    )


def check_fits(preflight: Preflight, config: Config) -> None:
    if preflight.predicted_peak_mb > preflight.available_mb:
        raise out_of_memory(
            config, "predicted before training",
            f"the heaviest step needs about {preflight.predicted_peak_mb:,.0f} MiB "
            f"({preflight.peak_mb:,.0f} measured + {preflight.optimizer_state_mb:,.0f} optimizer state) "
            f"but only {preflight.available_mb:,.0f} MiB are available",
        )
