"""Who is writing a run folder: a lock file that tells a live run from one whose process died.

A killed process (SIGKILL, out-of-memory killer, power loss) cannot update metrics.json, which then
says "running" forever. run.lock records the writer's pid, host and process start time; a folder whose
metrics say "running" but whose writer is gone is reported as "crashed".
"""

import socket
from pathlib import Path
from typing import Any

import psutil

from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime import files


def this_process() -> dict[str, Any]:
    process = psutil.Process()
    return {"pid": process.pid, "host": socket.gethostname(), "process_started": process.create_time()}


def acquire(run_dir: Path) -> None:
    files.write_json(run_dir / artifacts.LOCK_FILE, this_process())


def release(run_dir: Path) -> None:
    (run_dir / artifacts.LOCK_FILE).unlink(missing_ok=True)


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    try:
        return files.read_json_object(run_dir / artifacts.LOCK_FILE)
    except (OSError, ValueError):
        return None


def writer_alive(lock: dict[str, Any]) -> bool | None:
    """True or False for a lock taken on this host; None (unknown) for another host's."""
    if lock.get("host") != socket.gethostname():
        return None
    try:
        # the start time tells a reused pid from the writer itself
        return abs(psutil.Process(lock["pid"]).create_time() - lock["process_started"]) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError):
        return False


def run_status(run_dir: Path, metrics: RunMetrics | None = None) -> str:
    """metrics.json's status (read unless given), with "running" turned into "crashed" when the writing
    process is gone."""
    if metrics is None:
        try:
            metrics = RunMetrics.read(run_dir / artifacts.METRICS_FILE)
        except (OSError, ValueError):
            return "unknown"
    status = metrics.status
    if status != "running":
        return status
    lock = read_lock(run_dir)
    return "crashed" if lock is None or writer_alive(lock) is False else "running"


def describe_lock(run_dir: Path) -> str:
    lock = read_lock(run_dir)
    if lock is None:
        return "no lock file"
    return f"pid {lock.get('pid')} on {lock.get('host')}"
