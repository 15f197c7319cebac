"""One run as a comparison sees it: its row (RunRow, from the run folder's RunRecord), its factors (the config
keys that may differ between runs compared fairly), its provenance (data, backbone, code, device), and how those
values are written for people."""

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_pipeline.core.config import changed_values, config_settings
from finetune_pipeline.core.training_mode import FROZEN_BACKBONE_IGNORES
from finetune_pipeline.experiments.stability import Stability, loss_stability
from finetune_pipeline.runs import run_lock
from finetune_pipeline.runs.artifacts import CONFIG_FILE, METRICS_FILE, TRAIN_LOG_FILE
from finetune_pipeline.runs.plots import RunCurves
from finetune_pipeline.runs.run_record import RunRecord, describe_problem

SEED_KEY = "seed"  # reported on its own: a seed change is noise, not a factor
# Where the data lies and where results go are not factors; the data's content is checked by sha256.
PATH_KEYS = {"data.train_file", "data.val_file", "data.test_file"}
PATH_PREFIXES = ("output.",)
FROZEN_BACKBONE_KEY = "training.freeze_backbone"
MISSING = "—"
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
SHA256_SHOWN = 12  # characters of a digest shown to people; comparisons use all 64


@dataclass
class RunRow:
    """One run as the comparison shows it."""

    label: str
    run_dir: Path
    status: str
    best_val_score: float | None
    test_score: float | None
    best_epoch: int | None
    wall_time_s: float | None
    mean_epoch_time_s: float | None
    peak_rss_mb: float | None
    stability: Stability
    curves: RunCurves
    seed: int | None
    factors: dict[str, Any] | None  # the config without seed and path keys; None when config.json is unreadable
    differences: dict[str, tuple[Any, Any]] | None  # factor -> (reference value, this run's value)
    split_sizes: dict[str, int]  # split -> number of texts; {} when metrics.json did not record them
    metric: str
    repeat_key: str  # equal for runs that are repeats of one another


# What a comparison loses with each file of a run folder that is missing or unreadable.
CONSEQUENCES = {METRICS_FILE: "scores, status and provenance unknown", CONFIG_FILE: "its factors cannot be checked",
                TRAIN_LOG_FILE: "loss stability unknown"}


def describe_problems(record: RunRecord) -> list[str]:
    """The problems with the files a comparison reads, and what each costs it."""
    return [f"{describe_problem(problem)}: {CONSEQUENCES[problem.file]}" for problem in record.problems
            if problem.file in CONSEQUENCES]


def is_factor(key: str) -> bool:
    return key != SEED_KEY and key not in PATH_KEYS and not key.startswith(PATH_PREFIXES)


def flat_config(record: RunRecord) -> dict[str, Any]:
    """config.json as dotted keys ({} when unreadable); model.lora is one factor, null or its settings."""
    return config_settings(record.config or {})


def factors_of(record: RunRecord) -> dict[str, Any] | None:
    if record.config is None:
        return None
    config = flat_config(record)
    frozen = config.get(FROZEN_BACKBONE_KEY) is True
    return {key: value for key, value in config.items()
            if is_factor(key) and not (frozen and key in FROZEN_BACKBONE_IGNORES)}


def factor_differences(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The factors whose values differ. A key that factors_of left out of one side (ignored by its frozen
    backbone) is no difference."""
    return {key: values for key, values in changed_values(reference, other).items()
            if key in reference and key in other or key not in FROZEN_BACKBONE_IGNORES}


def summarize(record: RunRecord, reference: RunRecord) -> RunRow:
    metrics = record.measured
    seed = metrics.seed if metrics.seed is not None else flat_config(record).get(SEED_KEY)
    factors, reference_factors = factors_of(record), factors_of(reference)
    comparable = factors is not None and reference_factors is not None
    status = run_lock.run_status(Path(record.run_dir), metrics)
    return RunRow(
        label=run_label(record, seed),
        run_dir=record.run_dir,
        status=status,
        best_val_score=metrics.best_val_score,
        test_score=metrics.test_score,
        best_epoch=metrics.best_epoch,
        wall_time_s=metrics.wall_time_s,
        mean_epoch_time_s=statistics.fmean(metrics.epoch_times_s) if metrics.epoch_times_s else None,
        peak_rss_mb=metrics.peak_rss_mb,
        stability=loss_stability(record.curves.losses),
        curves=record.curves,
        seed=seed,
        factors=factors,
        differences=factor_differences(reference_factors, factors) if comparable else None,
        split_sizes={split: size for split, size in (metrics.split_sizes or {}).items() if size > 0},
        metric=metrics.metric_name,
        repeat_key=json.dumps([status, seed, factors, data_identity(record), backbone_identity(record),
                               code_identity(record), hardware_identity(record)], sort_keys=True, default=str)
        if factors is not None else f"unknown config {record.run_dir}",  # an unreadable config repeats nothing
    )


def run_label(record: RunRecord, seed: int | None) -> str:
    """The run folder's name, or for a sweep member its name and seed: 'hidden_dim=128 (seed 42)'."""
    member = record.measured.sweep_member
    return f"{member} (seed {seed})" if member is not None else record.run_dir.name


def data_identity(record: RunRecord, by: str = "rows_sha256") -> dict[str, str | None] | None:
    """split -> the hash of its data that `by` names (None for a split carved out of the train file); None for runs
    without it. by: "rows_sha256", the rows read (a run recorded before rows were hashed gives its file's), or
    "sha256", the file's bytes."""
    data_files = record.measured.data_files
    if data_files is None:
        return None
    return {split: None if entry is None else entry.get(by, entry.get("sha256")) for split, entry in data_files.items()}


def data_identities(records: list[RunRecord]) -> list[dict[str, str | None] | None]:
    """Each run's data identity, all by the same hash: the rows read, or the files' bytes where a run recorded
    only those (the same rows in another file format then count as other data)."""
    by_rows = all("rows_sha256" in entry for record in records
                  for entry in (record.measured.data_files or {}).values() if entry is not None)
    return [data_identity(record, "rows_sha256" if by_rows else "sha256") for record in records]


def backbone_identity(record: RunRecord) -> dict[str, Any] | None:
    """The backbone's name and a sha256 over all its weights; None when the run did not record the weights."""
    sha256 = record.measured.backbone_sha256
    return None if sha256 is None else {"model.backbone": flat_config(record).get("model.backbone"),
                                        "backbone_sha256": sha256}


def code_identity(record: RunRecord) -> dict[str, Any] | None:
    """The package version and its source's sha256; runs recorded before that hash existed fall back to the
    git commit (where a commit that changed only documentation still counts as a change)."""
    version = record.measured.code_version
    if version is None or not version.get("source_sha256"):
        return version
    return {"package": version.get("package"), "source_sha256": version["source_sha256"]}


def leakage_identity(record: RunRecord) -> dict[str, Any] | None:
    """How many val and test texts were also in train, and whether they were dropped: a split that shares texts
    with train scores memory too. None for runs recorded before leakage was counted."""
    leakage = record.measured.leakage
    if leakage is None:
        return None
    dropped = leakage.get("dropped")
    return {f"{split} texts also in train": 0 if dropped else leakage[f"{split}_in_train"]["normalised"]
            for split in ("val", "test")}


def hardware_identity(record: RunRecord) -> dict[str, Any] | None:
    """Where the run computed and in which precision it really ran (a CPU may run bf16 or fp32 for "fp16")."""
    precision = record.measured.mixed_precision
    if precision is None:
        return None
    return {"device": record.measured.device, "precision used": precision.get("used")}


def readable_value(value: Any) -> str:
    """A config or provenance value for people: strings bare, sha256 digests shortened, the rest as JSON."""
    if isinstance(value, str):
        return f"{value[:SHA256_SHOWN]}…" if SHA256_PATTERN.fullmatch(value) else value
    return json.dumps(value, ensure_ascii=False)


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """'model.hidden_dim: 256 → 128; model.dropout: 0.1 → 0.2'."""
    return "; ".join(f"{key}: {readable_value(old)} → {readable_value(new)}" for key, (old, new) in changes.items())


def format_number(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def format_seeds(seeds: list[int]) -> str:
    return ",".join(map(str, seeds)) or MISSING
