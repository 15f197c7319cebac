"""Which runs a comparison holds: run folders, sweep folders, glob patterns, the newest N, each once; --ref first."""

import glob
import json
from datetime import datetime
from pathlib import Path

from finetune_pipeline.errors import UserInputError
from finetune_pipeline.experiments.sweep import SWEEP_FILE
from finetune_pipeline.runs.artifacts import METRICS_FILE

COMPARISONS_DIR = "comparisons"


def resolve_run_dirs(targets: list[str], last: int | None, artifacts_root: Path,
                     reference: str | None = None) -> list[Path]:
    """The run folders that targets and --last name, in order, each once; with a reference (--ref), that run
    first, whether it was among them or not."""
    found = [run_dir for target in targets for run_dir in expand_target(target)]
    if last is not None:
        found += newest_runs(Path(artifacts_root), last)
    if reference is not None:
        if not is_run_dir(Path(reference)):
            raise UserInputError(f"--ref {reference}: not a run folder (no {METRICS_FILE}); give one run folder, "
                                 "e.g. --ref finetune_pipeline/artifacts/20261124-120000")
        found.insert(0, Path(reference))
    if not found:
        raise UserInputError("nothing to compare: give run folders, a sweep folder, a glob pattern in quotes "
                             "(e.g. 'finetune_pipeline/artifacts/2*') or --last N")
    unique: dict[Path, Path] = {}
    for run_dir in found:
        unique.setdefault(run_dir.resolve(), run_dir)  # the same folder given twice, or by two names
    return list(unique.values())


def expand_target(target: str) -> list[Path]:
    path = Path(target)
    if is_run_dir(path):
        return [path]
    if (path / SWEEP_FILE).is_file():
        return sweep_run_dirs(path)
    if path.is_dir():
        raise UserInputError(f"{target}: neither a run folder (no {METRICS_FILE}) nor a sweep folder "
                             f"(no {SWEEP_FILE}); pass run folders such as finetune_pipeline/artifacts/20261124-120000")
    if any(character in target for character in "*?["):  # a pattern the shell left alone (quoted)
        return glob_run_dirs(target)
    raise UserInputError(f"{target}: not found; expected a run folder (with {METRICS_FILE}), a sweep folder "
                         f"(with {SWEEP_FILE}) or a glob pattern in quotes")


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


def glob_run_dirs(pattern: str) -> list[Path]:
    """Every run folder the pattern matches, and the runs of every sweep folder it matches; nothing else."""
    run_dirs = []
    for match in map(Path, sorted(glob.glob(pattern))):
        if is_run_dir(match) or (match / SWEEP_FILE).is_file():
            run_dirs += expand_target(str(match))
    if not run_dirs:
        raise UserInputError(f"{pattern}: matches no run folder (with {METRICS_FILE}) and no sweep folder "
                             f"(with {SWEEP_FILE})")
    return run_dirs


def sweep_run_dirs(sweep_dir: Path) -> list[Path]:
    """The run folders that a sweep's members wrote; members that failed before creating one are skipped."""
    sweep_file = sweep_dir / SWEEP_FILE
    try:
        members = json.loads(sweep_file.read_text(encoding="utf-8")).get("members")
    except (ValueError, AttributeError) as err:
        raise UserInputError(f"{sweep_file}: not a sweep record ({err}); pass the run folders instead") from None
    if not isinstance(members, list):
        raise UserInputError(f"{sweep_file}: has no \"members\" list; pass the run folders instead")
    run_dirs = []
    for member in members:
        if member.get("run_dir") is None:
            continue
        run_dir = Path(member["run_dir"])  # relative paths start from where the sweep was run
        if not is_run_dir(run_dir):
            raise UserInputError(
                f"{sweep_file}: member {member.get('name')!r} has no run folder at {run_dir} (moved or deleted?); "
                "run compare from the folder the sweep ran in, or pass the run folders themselves"
            )
        run_dirs.append(run_dir)
    if not run_dirs:
        raise UserInputError(f"{sweep_file}: no member has a run folder (each failed before training started)")
    return run_dirs


def newest_runs(artifacts_root: Path, count: int) -> list[Path]:
    """The newest `count` run folders directly under artifacts_root, oldest first (the first is the reference)."""
    if count < 1:
        raise UserInputError(f"--last {count}: give how many of the newest runs to compare, 1 or more")
    if not artifacts_root.is_dir():
        raise UserInputError(f"--last {count}: the artifacts folder {artifacts_root} does not exist; train a run first")
    # Run folders are named by their start time, so the name order is the time order.
    runs = sorted((child for child in artifacts_root.iterdir() if is_run_dir(child)), key=lambda child: child.name)
    if not runs:
        raise UserInputError(f"--last {count}: no run folder (with {METRICS_FILE}) in {artifacts_root}")
    return runs[-count:]


def default_output_dir(artifacts_root: Path) -> Path:
    return Path(artifacts_root) / COMPARISONS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")


def comparison_dir(targets: list[str], artifacts_root: Path) -> Path:
    """Where a comparison's files go unless the user says: the sweep folder when one sweep folder is compared, else
    comparisons/<time>/ under artifacts_root (for the command line, output.artifacts_root)."""
    if len(targets) == 1 and (Path(targets[0]) / SWEEP_FILE).is_file():
        return Path(targets[0])
    return default_output_dir(artifacts_root)
