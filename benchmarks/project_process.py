"""One `finetune train` in a fresh process, as a user runs it: the benchmarks' common way to time the project."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "finetune_pipeline/configs/train_config.json"


def finetune_train(name: str, sets: dict[str, Any], entry: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Train train_config.json with every --set of sets; (the run folder, its metrics.json). entry: the Python
    arguments that start the CLI (default `-m finetune_pipeline.cli`). A failed run ends the benchmark, naming it."""
    arguments = [part for key, value in sets.items() for part in ("--set", f"{key}={json.dumps(value)}")]
    result = subprocess.run([sys.executable, *(entry or ["-m", "finetune_pipeline.cli"]), "train",
                             "--config", DEFAULT_CONFIG, *arguments], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    run_dir = Path(next(line.split(": ", 1)[1] for line in result.stdout.splitlines()
                        if line.startswith("run folder: ")))
    return run_dir, json.loads((run_dir / "metrics.json").read_text())
