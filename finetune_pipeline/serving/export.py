"""`finetune export`: a completed run as folders that other tools load without this package.

    RUN_DIR/export/hf/    for transformers: config.json (with auto_map), model.safetensors, the tokenizer,
                          modeling_pooled_classifier.py and a model card (README.md)       -> hf_folder, model_card
    RUN_DIR/export/onnx/  for onnxruntime: model.onnx, the tokenizer, classifier.json       -> onnx_folder

Each folder is built in a temporary sibling and renamed into place once every requested format is complete,
so an export that fails or is interrupted leaves the older export as it was. Weights are safetensors or ONNX
only: nothing in an export is a pickle.
"""

import os
import shutil
import uuid
from pathlib import Path

from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runtime import files
from finetune_pipeline.serving import hf_folder, onnx_folder

EXPORT_DIR = "export"  # inside the run folder, unless --output names another place
HF_DIR, ONNX_DIR = "hf", "onnx"  # the export folder's subfolders, one per format
FORMATS = {"hf": (HF_DIR,), "onnx": (ONNX_DIR,), "all": (HF_DIR, ONNX_DIR)}  # --format -> the folders written
CHECKPOINTS = {"best": artifacts.BEST_MODEL_FILE, "final": artifacts.FINAL_MODEL_FILE}


def export_run(run_dir: Path, export_format: str = "hf", checkpoint: str = "best",
               output: Path | None = None) -> dict[str, Path]:
    """Write a completed run's model in the formats asked for, into output (default RUN_DIR/export)/hf and
    /onnx; returns {format: folder}. Anything that is not a completed run folder is a UserInputError."""
    if export_format not in FORMATS:
        raise UserInputError(f"--format {export_format!r}: choose one of {', '.join(FORMATS)}")
    if checkpoint not in CHECKPOINTS:
        raise UserInputError(f"--checkpoint {checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    formats = FORMATS[export_format]
    if ONNX_DIR in formats:
        onnx_folder.require_export_packages("finetune export --format onnx")  # before any work
    run_dir = Path(run_dir)
    check_completed(run_dir)
    run = artifacts.load_run(run_dir, CHECKPOINTS[checkpoint])
    if TrainingMode.of(run.config).lora is not None:
        run.model.merge_lora()  # plain weights (W + alpha / r B A): transformers and onnxruntime load them as they are
    source = {"run_dir": run_dir.name, "checkpoint": CHECKPOINTS[checkpoint]}
    run_config_file = files.read_json_object(run_dir / artifacts.CONFIG_FILE)  # for the model card, as it is
    writers = {HF_DIR: lambda folder: hf_folder.write_hf_folder(run, folder, source, run_config_file),
               ONNX_DIR: lambda folder: onnx_folder.write_onnx_folder(run, folder, source)}
    root = run_dir / EXPORT_DIR if output is None else Path(output)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"--output {root}: cannot create it ({err.strerror})") from None
    built: dict[str, Path] = {}
    try:
        for name in formats:
            built[name] = temporary_sibling(root / name)
            writers[name](built[name])
            finish_files(built[name])
        for name, temporary in built.items():
            replace_folder(temporary, root / name)
    finally:
        for temporary in built.values():
            shutil.rmtree(temporary, ignore_errors=True)  # gone already where it was renamed into place
    return {name: root / name for name in formats}


def check_completed(run_dir: Path) -> None:
    """A run folder whose training finished: its checkpoints and test metrics are final."""
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such run folder; give one of the folders under output.artifacts_root")
    if not (run_dir / artifacts.METRICS_FILE).is_file() or not (run_dir / artifacts.CONFIG_FILE).is_file():
        raise UserInputError(f"{run_dir}: not a run folder (it has no {artifacts.METRICS_FILE} and "
                             f"{artifacts.CONFIG_FILE}); give one of the folders under output.artifacts_root")
    status = run_lock.run_status(run_dir)
    if status != "completed":
        raise UserInputError(
            f"{run_dir}: the run is {status}, not completed; export needs a finished run (its model card reports "
            f"the test metrics). Continue it with `finetune train --resume {run_dir}`, or export another run"
        )


def temporary_sibling(target: Path) -> Path:
    """A new empty folder next to target, hidden, with the usual permissions (mkdtemp's are owner-only)."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.mkdir()
    return temporary


def finish_files(folder: Path) -> None:
    """Give every file the usual permissions (the folder's, mkdir applied the umask; some writers make files
    owner-only) and flush it to disk: after the rename, a power cut must find them complete."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, folder.stat().st_mode & 0o666)
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def replace_folder(temporary: Path, target: Path) -> None:
    """Rename temporary to target. A folder cannot be renamed over a non-empty one, so an older target is
    renamed aside first and removed only once the new one is in place."""
    older = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old") if target.exists() else None
    if older is not None:
        os.replace(target, older)
    try:
        os.replace(temporary, target)
    except BaseException:
        if older is not None:
            os.replace(older, target)  # put the older export back
        raise
    if older is not None:
        shutil.rmtree(older)
