"""The run folder and everything in it: the files' names, checkpoints, and loading a finished run.

Every file is written atomically through runtime/files.py: a crash or Ctrl-C leaves either the old file or
the new one, never half of one.
"""

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from finetune_pipeline.core.config import Config, config_from_dict
from finetune_pipeline.core.freeze_proof import fingerprint_of, tensor_sha256
from finetune_pipeline.core.model import TextClassifier, build_model
from finetune_pipeline.core.task import Task, loaded_task
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime.files import load_checkpoint

# File names are fixed: the students' guide tells people to open them.
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
TRAIN_LOG_FILE = "train.log"
FREEZE_PROOF_FILE = "freeze_proof.json"
BEST_MODEL_FILE = "best_model.pt"
FINAL_MODEL_FILE = "final_model.pt"
HEAD_FILE = "classifier_head.pt"
RESUME_FILE = "resume.pt"  # while a run is unfinished: the training state and the weights (resume.py)
LOCK_FILE = "run.lock"  # while a run is running: which process holds it (run_lock.py)
CURVES_FILE = "curves.png"
REPORT_FILE = "report.html"
EXPORT_DIR = "export"  # finetune export writes here, unless --output names another place
HF_DIR, ONNX_DIR, ONNX_INT8_DIR = "hf", "onnx", "onnx-int8"  # the export folder's subfolders, one per format

CHECKPOINT_FORMAT_VERSION = 1


def expected_artifact_bytes(model: TextClassifier, config: Config) -> int:
    """About what a run writes at most: best and final checkpoints, the resume checkpoint (weights and AdamW's
    two moments per trained parameter) and its temporary copy while it is replaced, in float32."""
    checkpoint = 4 * sum(tensor.numel() for tensor in saved_state(model, config).values())
    resume = checkpoint + 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 2 * checkpoint + 2 * resume + 4 * 2**20  # + logs, plots and the report


def check_free_space(root: str | Path, needed_bytes: int) -> None:
    """Fail before training, not at the first checkpoint an hour later."""
    existing = next((folder for folder in (Path(root), *Path(root).absolute().parents) if folder.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise UserInputError(
            f"output.artifacts_root '{root}': {free / 2**20:,.0f} MiB free on its disk, and this run writes up to "
            f"about {needed_bytes / 2**20:,.0f} MiB of checkpoints; free some space (old run folders in it can go) "
            "or point output.artifacts_root at another disk"
        )


def create_run_dir(root: str | Path, suffix: str = "") -> Path:
    """A new folder named by the start time (and suffix); '-2', '-3', ... when runs start in the same second."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"output.artifacts_root '{root}': cannot create it ({err.strerror}); point it at a folder "
                             "you may write, e.g. --set output.artifacts_root=$HOME/finetune_runs") from None
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S") + suffix
    for attempt in range(1, 1000):
        run_dir = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir()  # fails if it exists: two runs can never share a folder
            return run_dir
        except FileExistsError:
            continue
        except OSError as err:
            raise UserInputError(f"output.artifacts_root '{root}': cannot write there ({err.strerror})") from None
    raise UserInputError(f"output.artifacts_root '{root}': too many runs started in the second {stamp}")


def saved_state(model: TextClassifier, config: Config) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the whole model when the whole backbone trains, else the head and the backbone
    tensors that train (the top layers of train_top_layers, the adapters of LoRA)."""
    state = model.state_dict()
    if TrainingMode.of(config).checkpoint_holds_backbone:
        return state
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {name: tensor for name, tensor in state.items() if name.startswith("head.") or name in trained}


def left_out_sha256(backbone_hashes: dict[str, str], saved: dict[str, Any]) -> str:
    """One hash of the backbone tensors a checkpoint leaves out (they are the pretrained ones)."""
    return fingerprint_of({name: tensor_hash for name, tensor_hash in backbone_hashes.items()
                           if f"backbone.{name}" not in saved})


def checkpoint_payload(
    model: TextClassifier, task: Task, config: Config, epoch: int, step: int, backbone_hashes: dict[str, str],
) -> dict[str, Any]:
    """Only tensors and plain types, so that torch.load(path, weights_only=True) can read it.

    What does not train is left out: a frozen backbone, or the embeddings and lower layers below
    train_top_layers. They are still the pretrained ones, named by config.model.backbone and identified by
    backbone_sha256 (a hash of the left-out tensors, from backbone_hashes: every backbone tensor's hash before
    training), which loading checks. A frozen run's checkpoint is then the head alone, well under a megabyte instead of the
    backbone's ~90 MB.
    """
    backbone_included = TrainingMode.of(config).checkpoint_holds_backbone
    state = saved_state(model, config)
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_state": state,
        "backbone_included": backbone_included,
        "backbone": config.model.backbone,
        # the pretrained backbone it started from, or the part of it left out
        "backbone_sha256": fingerprint_of(backbone_hashes) if backbone_included else left_out_sha256(backbone_hashes,
                                                                                                      state),
        "label_names": list(task.label_names),
        "task": task.record(),  # what rebuilds the task when the model is loaded (loaded_task)
        "config": config.to_plain(),
        "epoch": epoch,
        "step": step,
    }


TEMPERATURE_KEY = "head.temperature"  # core/model.py's ClassifierHead buffer


def restore_weights(model: TextClassifier, payload: dict[str, Any], source: Path) -> None:
    """Load a checkpoint's weights into model; a left-out backbone must be exactly the one trained with.

    A model without its backbone (a run on cached features) takes the head alone: the run that saved the
    checkpoint is the one restoring it, with the same backbone fingerprint.
    """
    if not payload["backbone_included"] and model.backbone is not None:
        loaded = left_out_sha256({name: tensor_sha256(tensor) for name, tensor in model.base_state().items()},
                                 payload["model_state"])
        if loaded != payload["backbone_sha256"]:
            raise UserInputError(
                f"{source}: was saved without its frozen backbone '{payload['backbone']}' (weights sha256 "
                f"{payload['backbone_sha256'][:16]}...), but the backbone found now has other weights "
                f"({loaded[:16]}...); install the backbone version the run was trained with"
            )
    missing, unexpected = model.load_state_dict(payload["model_state"], strict=False)
    missing = [key for key in missing if key != TEMPERATURE_KEY]  # saved before calibration existed: it stays 1
    if unexpected or (missing and (payload["backbone_included"] or any(not k.startswith("backbone.") for k in missing))):
        raise UserInputError(f"{source}: does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


@dataclass
class LoadedRun:
    model: TextClassifier
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    config: Config
    task: Task
    metrics: RunMetrics  # empty (every field unknown) for a model that comes without its run folder


def load_run(run_dir: str | Path, checkpoint: str = BEST_MODEL_FILE) -> LoadedRun:
    """Rebuild a trained model from a run folder, in eval mode, on the CPU."""
    run_dir = Path(run_dir)
    payload = load_checkpoint(run_dir / checkpoint)
    config = config_from_dict(payload["config"], source=str(run_dir / checkpoint))
    task = loaded_task(payload["label_names"], payload.get("task"), config.training.metric)
    model, tokenizer = build_model(config, task)
    restore_weights(model, payload, run_dir / checkpoint)
    metrics_path = run_dir / METRICS_FILE
    metrics = RunMetrics.read(metrics_path) if metrics_path.exists() else RunMetrics()
    return LoadedRun(model.eval(), tokenizer, payload["label_names"], config, task, metrics)
