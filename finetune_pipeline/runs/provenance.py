"""What a run was made from, beyond its config: the data files' contents and the code's version.

Two runs can only be compared when they differ in the one factor being studied. A config records the
knobs, but not whether train.csv was edited between the runs or the code changed; these fingerprints
let `finetune compare` check that too.
"""

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from finetune_pipeline.core import readers
from finetune_pipeline.core.config import DataConfig

PACKAGE_NAME = "finetune-pipeline"


def data_fingerprints(data: DataConfig, rows_sha256: dict[str, str | None]) -> dict[str, dict[str, str] | None]:
    """Each split's source (a file, a datasets folder, a hub split): its path, the sha256 of its bytes (what
    `sha256sum` prints) and of its rows as read (data.rows_sha256: what identifies the data); None for a split
    carved out of the train file."""
    files = {"train": data.train_file, "val": data.val_file, "test": data.test_file}
    return {split: None if path is None else {"path": path, "sha256": readers.source_sha256(path, split),
                                              "rows_sha256": rows_sha256[split]}
            for split, path in files.items()}


def data_changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The splits whose data differ from what a run recorded."""
    recorded = recorded or {}
    return [split for split, now in current.items() if not same_source(recorded.get(split), now)]


def same_source(then: dict[str, str] | None, now: dict[str, str] | None) -> bool:
    """By the rows read; a run recorded before rows were hashed, by the file's bytes."""
    if then is None or now is None:
        return then is now
    key = "rows_sha256" if "rows_sha256" in then else "sha256"
    return then[key] == now[key]


def code_version() -> dict[str, Any]:
    """The package version, a sha256 of the package's source (what compare checks: a commit that changed
    only documentation is the same code), and, in a git checkout, the commit and whether the package's code
    was changed since (edited configs do not count: they are recorded in each run's config.json)."""
    try:
        package = metadata.version(PACKAGE_NAME)
    except metadata.PackageNotFoundError:
        package = None
    checkout = Path(__file__).resolve().parents[1]  # the package folder, finetune_pipeline/
    commit = git_output(["rev-parse", "HEAD"], checkout)
    status = (git_output(["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)configs"], checkout)
              if commit else None)
    return {"package": package, "source_sha256": source_sha256(checkout), "git_commit": commit,
            "git_dirty": None if status is None else bool(status)}


def source_sha256(package_dir: Path) -> str:
    """One hash over the package's Python files (its modules and scripts/), names and contents, in a fixed
    order. Two levels only: the run folders and caches inside the package folder are never walked."""
    digest = hashlib.sha256()
    for path in sorted([*package_dir.glob("*.py"), *package_dir.glob("*/*.py")]):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def git_output(arguments: list[str], directory: Path) -> str | None:
    """git's answer, or None outside a checkout or without git."""
    try:
        result = subprocess.run(["git", *arguments], cwd=directory, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
