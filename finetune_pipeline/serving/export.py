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
from typing import Any

from finetune_pipeline.core.data import Example, load_splits
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runs.run_record import read_run_files
from finetune_pipeline.serving import hf_folder, onnx_folder
from finetune_pipeline.serving.inference import load_classifier, score_examples

EXPORT_DIR, HF_DIR, ONNX_DIR, ONNX_INT8_DIR = (artifacts.EXPORT_DIR, artifacts.HF_DIR, artifacts.ONNX_DIR,
                                               artifacts.ONNX_INT8_DIR)
FORMATS = {"hf": (HF_DIR,), "onnx": (ONNX_DIR,), "onnx-int8": (ONNX_INT8_DIR,),
           "all": (HF_DIR, ONNX_DIR, ONNX_INT8_DIR)}  # --format -> the folders written
ONNX_FORMATS = (ONNX_DIR, ONNX_INT8_DIR)
CHECKPOINTS = {"best": artifacts.BEST_MODEL_FILE, "final": artifacts.FINAL_MODEL_FILE}


def export_run(run_dir: Path, export_format: str = "hf", checkpoint: str = "best",
               output: Path | None = None) -> dict[str, Path]:
    """Write a completed run's model in the formats asked for, into output (default RUN_DIR/export)/hf and
    /onnx; returns {format: folder}. Anything that is not a completed run folder is a UserInputError."""
    if export_format not in FORMATS:
        raise UserInputError(f"export format {export_format!r}: choose one of {', '.join(FORMATS)}")
    if checkpoint not in CHECKPOINTS:
        raise UserInputError(f"export checkpoint {checkpoint!r}: choose one of {', '.join(CHECKPOINTS)}")
    formats = FORMATS[export_format]
    if set(formats) & set(ONNX_FORMATS):
        onnx_folder.require_export_packages(f"finetune export --format {export_format}")  # before any work
    run_dir = Path(run_dir)
    run_config_file = check_completed(run_dir)  # config.json as it is, for the model card
    run = artifacts.load_run(run_dir, CHECKPOINTS[checkpoint])
    if TrainingMode.of(run.config).lora is not None:
        run.model.merge_lora()  # plain weights (W + alpha / r B A): transformers and onnxruntime load them as they are
    source = {"run_dir": run_dir.name, "checkpoint": CHECKPOINTS[checkpoint]}
    writers = {HF_DIR: lambda folder: hf_folder.write_hf_folder(run, folder, source, run_config_file),
               ONNX_DIR: lambda folder: onnx_folder.write_onnx_folder(run, folder, source),
               ONNX_INT8_DIR: lambda folder: write_int8_folder(run, folder, source, test)}
    root = run_dir / EXPORT_DIR if output is None else Path(output)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"export output {root}: cannot create it ({err.strerror}); choose a folder you may "
                             "write (--output on the command line, output= in Python)") from None
    for leftover in [*root.glob(".*.tmp"), *root.glob(".*.old")]:  # a killed export's half-written folders
        shutil.rmtree(leftover, ignore_errors=True)
    try:  # read once, scored through each format written
        test, unreadable = load_splits(run.config.data, run.config.seed, type(run.task)).test, None
    except UserInputError as error:  # the data moved since training: the export is still whole
        test, unreadable = None, str(error)
    built: dict[str, Path] = {}
    try:
        for name in formats:
            built[name] = temporary_sibling(root / name)
            writers[name](built[name])
            record_own_score(built[name], name, run, test, unreadable)
            finish_files(built[name])
        for name, temporary in built.items():
            replace_folder(temporary, root / name)
    finally:
        for temporary in built.values():
            shutil.rmtree(temporary, ignore_errors=True)  # gone already where it was renamed into place
    return {name: root / name for name in formats}


def record_own_score(folder: Path, name: str, run: artifacts.LoadedRun, test: list[Example] | None,
                     unreadable: str | None) -> None:
    """Score the run's test split (None where it cannot be read: unreadable says why) through the written folder
    itself (transformers or onnxruntime, float32 on the CPU) and say so in it: the model card's last section, or
    the ONNX folder's classifier.json. What a user of the export gets, measured, next to what the run recorded."""
    metric = run.config.training.metric
    if test is None:
        measured, words = None, f"Not measured: the run's test data cannot be read here ({unreadable})."
    else:
        runtime = "onnx" if name in ONNX_FORMATS else "torch"
        measured = score_examples(load_classifier(folder, artifacts.BEST_MODEL_FILE, runtime), test,
                                  run.config.training.eval_batch_size)
        recorded = run.metrics.test_score
        words = (f"The run's test split ({len(test)} examples) scored through this folder's own files "
                 f"({'onnxruntime' if runtime == 'onnx' else 'transformers'}, float32 on the CPU): {metric} "
                 f"{measured[metric]:.4f}. The run recorded {metric} "
                 f"{'unknown' if recorded is None else f'{recorded:.4f}'} for its best checkpoint, in its own "
                 "precision and batches.")
    if name in ONNX_FORMATS:
        onnx_folder.add_info(folder, {"measured_through_export": None if test is None else
                                      {"test_examples": len(test), metric: measured[metric]}})
    else:
        with (folder / hf_folder.CARD_FILE).open("a", encoding="utf-8") as card:
            card.write(f"\n## Measured through this export\n\n{words}\n")


def write_int8_folder(run: artifacts.LoadedRun, folder: Path, source: dict[str, str],
                      test: list[Example] | None) -> None:
    """The ONNX folder, its graph quantized to int8; classifier.json also keeps the float32 graph's score on the
    run's test split, measured before quantizing, to set the int8 one (record_own_score) against."""
    onnx_folder.write_onnx_folder(run, folder, source)
    if test is not None:
        metric = run.config.training.metric
        fp32 = score_examples(load_classifier(folder, artifacts.BEST_MODEL_FILE, "onnx"), test,
                              run.config.training.eval_batch_size)
        onnx_folder.add_info(folder, {"measured_before_quantization": {"test_examples": len(test),
                                                                       metric: fp32[metric]}})
    onnx_folder.quantize_onnx_folder(folder)


def check_completed(run_dir: Path) -> dict[str, Any]:
    """A run folder whose training finished (its checkpoints and test metrics are final); its config.json."""
    metrics, run_config_file = read_run_files(run_dir, "export")
    status = run_lock.run_status(run_dir, metrics)
    if status != "completed":
        raise UserInputError(
            f"{run_dir}: the run is {status}, not completed; export needs a finished run (its model card reports "
            f"the test metrics). Continue it with `finetune train --resume {run_dir}`, or export another run"
        )
    return run_config_file


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
