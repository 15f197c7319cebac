"""A run folder read back: metrics.json, config.json, freeze_proof.json and train.log, each file read once.

compare and report.html read runs through here, finished or not: a failed run may lack a file, and a killed
one may have left a train.log cut in the middle of a line, so a file that is missing or unreadable leaves its
part empty and a FileProblem says which file and why; each reader words the problems for its own audience.
predict, evaluate, export, resume and the API's load_run need metrics.json and config.json whole
(read_run_files): for them a problem is an error, worded the same way.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.artifacts import CONFIG_FILE, FREEZE_PROOF_FILE, METRICS_FILE, TRAIN_LOG_FILE
from finetune_pipeline.runs.plots import RunCurves, read_run_curves
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime.files import read_json_object

Part = TypeVar("Part")


@dataclass
class FileProblem:
    file: str  # the file's name in the run folder
    error: str | None  # why it could not be read; None: it is not there

    @property
    def missing(self) -> bool:
        return self.error is None


@dataclass
class RunRecord:
    """What could be read from one run folder."""

    run_dir: Path
    metrics: RunMetrics | None  # None without a readable metrics.json
    config: dict[str, Any] | None  # config.json as written
    freeze_proof: dict[str, Any] | None
    curves: RunCurves  # train.log's step and epoch lines; empty lists without a readable train.log
    problems: list[FileProblem]

    @property
    def measured(self) -> RunMetrics:
        """metrics.json, or an empty record (every field unknown) when there is none."""
        return self.metrics or RunMetrics()


def read_run_record(run_dir: Path) -> RunRecord:
    problems: list[FileProblem] = []
    metrics = read_part(run_dir / METRICS_FILE, RunMetrics.read, problems)
    config = read_part(run_dir / CONFIG_FILE, read_json_object, problems)
    freeze_proof = read_part(run_dir / FREEZE_PROOF_FILE, read_json_object, problems)
    metric = (metrics or RunMetrics()).metric_name
    curves = read_part(run_dir / TRAIN_LOG_FILE, lambda path: read_run_curves(path.parent, run_dir.name, metric),
                       problems)
    empty_curves = RunCurves(run_dir.name, steps=[], losses=[], learning_rates=[], epochs=[], val_scores=[],
                             metric=metric)
    return RunRecord(run_dir, metrics, config, freeze_proof, curves or empty_curves, problems)


def read_part(path: Path, read: Callable[[Path], Part], problems: list[FileProblem]) -> Part | None:
    """read(path), or None with the problem added: (OSError, ValueError, KeyError) cover a broken file, bad
    UTF-8, bad JSON, a metrics field of the wrong type and a train.log step line without its loss."""
    if not path.is_file():
        problems.append(FileProblem(path.name, None))
        return None
    try:
        return read(path)
    except (OSError, ValueError, KeyError) as error:
        problems.append(FileProblem(path.name, str(error)))
        return None


def describe_problem(problem: FileProblem) -> str:
    return f"{problem.file} " + ("is missing" if problem.missing else f"cannot be read ({problem.error})")


def read_run_files(run_dir: Path, purpose: str) -> tuple[RunMetrics, dict[str, Any]]:
    """metrics.json and config.json (as written) of a run folder that purpose ('export', '--resume') needs whole."""
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such run folder; give one of the folders under output.artifacts_root, "
                             "e.g. finetune_pipeline/artifacts/20261124-120000")
    problems: list[FileProblem] = []
    metrics = read_part(run_dir / METRICS_FILE, RunMetrics.read, problems)
    config = read_part(run_dir / CONFIG_FILE, read_json_object, problems)
    missing = [problem.file for problem in problems if problem.missing]
    if missing:
        raise UserInputError(f"{run_dir}: not a run folder (it has no {' and no '.join(missing)}); give one of the "
                             "folders under output.artifacts_root, e.g. finetune_pipeline/artifacts/20261124-120000")
    if metrics is None or config is None:
        raise UserInputError(
            f"{run_dir}: {'; '.join(describe_problem(problem) for problem in problems)}; {purpose} needs both. A run "
            "writes each file whole, so this one was edited or cut short by a copy: restore it from a copy of the "
            "folder, or train the run again")
    return metrics, config
