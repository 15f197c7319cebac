"""Resuming a run exactly where it stopped.

Every output.checkpoint_every_steps optimizer steps, and at the end of each epoch, a run replaces its
resume.pt with the weights that train and the TrainingState (training.py): everything else the next step
depends on, AdamW's moments, the learning-rate schedule, the loss scaler, every random generator, the
position in the epoch's batch order (a pure function of the seed and the epoch, see
batching.training_steps), the best score so far and the running loss sums. Training is a deterministic
function of that state and the data, so `finetune train --resume RUN_DIR` continues bit for bit where
the checkpoint was taken (on a CPU; tested). Only the newest checkpoint is kept, and a completed run
deletes it.

A resumed run must be the same run: the config, the data files and the code are checked against what
the run recorded when it started.
"""

import shlex
from pathlib import Path
from typing import Any

from finetune_pipeline.core.config import Config, config_from_dict
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.training import TrainingState
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts, run_lock
from finetune_pipeline.runs.provenance import code_version, data_changes, data_fingerprints
from finetune_pipeline.runs.run_record import read_run_files
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime import files

RESUME_FORMAT_VERSION = 2  # 2: {"weights", "training_state"}, the state as TrainingState.state_dict() writes it


# What resume.pt holds is written and read back here, and nowhere else.
def save_resume_checkpoint(run_dir: Path, weights: dict[str, Any], state: TrainingState) -> None:
    """resume.pt, replaced atomically: weights as artifacts.checkpoint_payload makes them, and the training state."""
    files.save_torch(run_dir / artifacts.RESUME_FILE, {"format_version": RESUME_FORMAT_VERSION, "weights": weights,
                                                 "training_state": state.state_dict()})


def restore_resume_checkpoint(checkpoint: dict[str, Any], model: TextClassifier, state: TrainingState,
                              run_dir: Path) -> None:
    """Put a run back where its resume.pt was taken: the weights into model, everything else into state."""
    artifacts.restore_weights(model, checkpoint["weights"], run_dir / artifacts.RESUME_FILE)
    state.load_state_dict(checkpoint["training_state"])


def resumed_step(checkpoint: dict[str, Any] | None) -> int:
    """The optimizer step a resume checkpoint continues from; 0 without one (the run starts over)."""
    return checkpoint["training_state"]["step"] if checkpoint is not None else 0


def newest_unfinished_run(artifacts_root: Path) -> Path:
    """For `--resume` without a folder: the newest run folder that did not complete."""
    candidates = sorted((path.parent for path in artifacts_root.glob(f"*/{artifacts.METRICS_FILE}")),
                        key=lambda path: path.name, reverse=True)
    for run_dir in candidates:
        if run_lock.run_status(run_dir) in ("interrupted", "crashed", "failed"):
            return run_dir
    raise UserInputError(f"--resume: no unfinished run in {artifacts_root}; name the run folder to resume")


def check_same_data(run_dir: Path, config: Config, metrics: RunMetrics, rows_sha256: dict[str, str | None]) -> None:
    """The data the resumed run just read (preparation's, before anything is written) is the data it started with."""
    if changed := data_changes(metrics.data_files, data_fingerprints(config.data, rows_sha256)):
        raise UserInputError(f"--resume {run_dir}: the {' and '.join(changed)} data changed since the run started "
                             "(the rows read differ from metrics.json data_files); resuming would mix two datasets: "
                             f"start a new run, finetune train --from-run {shlex.quote(str(run_dir))}")


def check_resumable(run_dir: Path, force: bool) -> tuple[Config, RunMetrics, dict[str, Any] | None]:
    """(config, metrics so far, resume checkpoint or None if there is none yet) of a run that may be resumed;
    refuses one that may not."""
    where = f"--resume {run_dir}"
    rerun = f"finetune train --from-run {shlex.quote(str(run_dir))}"  # a new run with this run's config
    metrics, plain_config = read_run_files(run_dir, "--resume")
    status = run_lock.run_status(run_dir, metrics)
    if status == "completed":
        raise UserInputError(f"{where}: this run completed; there is nothing to resume. A new run with its "
                             f"config: {rerun}")
    if status == "running":
        raise UserInputError(f"{where}: this run is still running ({run_lock.describe_lock(run_dir)}); "
                             "stop it first (Ctrl-C), then resume it")
    config = config_from_dict(plain_config, source=str(run_dir / artifacts.CONFIG_FILE))
    if config.fingerprint() != metrics.config_hash:
        raise UserInputError(f"{where}: {artifacts.CONFIG_FILE} was changed after the run started (its hash no "
                             f"longer matches metrics.json); a changed config is a new run: {rerun}")
    recorded, current = metrics.code_version or {}, code_version()
    if recorded.get("source_sha256") != current["source_sha256"] and not force:
        raise UserInputError(f"{where}: the code changed since the run started (source sha256 "
                             f"{str(recorded.get('source_sha256'))[:12]} then, {current['source_sha256'][:12]} now), "
                             "so the result would not be exactly one run; add --force to resume anyway")
    checkpoint_path = run_dir / artifacts.RESUME_FILE
    if not checkpoint_path.is_file():
        return config, metrics, None  # stopped before its first checkpoint: it starts over, in its own folder
    checkpoint = files.load_checkpoint(checkpoint_path)
    if checkpoint.get("format_version") != RESUME_FORMAT_VERSION:
        raise UserInputError(f"{checkpoint_path}: written by another version of this package; start the run again: "
                             f"{rerun}")
    return config, metrics, checkpoint
