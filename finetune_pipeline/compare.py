"""`finetune compare`: runs side by side, with a loud WARNING wherever the comparison is not fair.

A fair comparison changes one factor at a time: one config value differs from the reference (the
first run), and the seed, the data, the backbone and the code are the same. Each breach is reported
as a warning that names the runs and the values. Runs whose configs differ only in the seed form a
seed group: the spread of their scores is the seed noise, and a difference between configs smaller
than that spread is not evidence of an effect.

The output folder gets compare.md (warnings first, then the tables), compare.csv (one row per run,
with its seed group's numbers repeated on the row, so that it loads as one table) and compare.png
(the runs' curves overlaid).
"""

import csv
import glob
import io
import json
import re
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from finetune_pipeline import run_lock
from finetune_pipeline.artifacts import CONFIG_FILE, METRICS_FILE, TRAIN_LOG_FILE, read_json_object, write_atomically
from finetune_pipeline.config import changed_values, flatten
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.plots import DEFAULT_METRIC_NAME, RunCurves, plot_overlay, read_run_curves
from finetune_pipeline.run_log import read_events
from finetune_pipeline.stability import Stability, loss_stability
from finetune_pipeline.sweep import SWEEP_FILE

COMPARISONS_DIR = "comparisons"
MARKDOWN_FILE = "compare.md"
CSV_FILE = "compare.csv"
PLOT_FILE = "compare.png"

SEED_KEY = "seed"  # reported on its own: a seed change is noise, not a factor
# Where the data lies and where results go are not factors; the data's content is checked by sha256.
PATH_KEYS = {"data.train_file", "data.val_file", "data.test_file"}
PATH_PREFIXES = ("output.",)
# Keys that training never reads while the backbone is frozen: not factors where a frozen run is involved.
FROZEN_BACKBONE_KEY = "training.freeze_backbone"
IGNORED_WHEN_FROZEN = {"training.encoder_learning_rate", "training.gradient_checkpointing"}

COMPLETED = "completed"
REFERENCE = "reference"
WITHIN_NOISE = "within seed noise"
BEYOND_NOISE = "beyond seed noise"
NOISE_UNKNOWN = "noise unknown"
SEEDS_EXAMPLE = "finetune sweep A --seeds 42,43,44"

MISSING = "—"
PIPED_OUTPUT_WIDTH = 160
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
SHA256_SHOWN = 12  # characters of a digest shown to people; comparisons use all 64

# Short headers, so that the table fits an 80-column terminal; compare.md explains them under the table.
RUN_COLUMNS = ("run", "status", "best val", "test", "best epoch", "time s", "s/epoch", "RSS MiB", "loss stability",
               "seed", "differs from reference in")
NUMBER_COLUMNS = {"best val", "test", "best epoch", "time s", "s/epoch", "RSS MiB", "seed"}
COLUMN_LEGEND = ("best val: best_val_score; test: test_score (the best epoch's checkpoint); time s: the whole run; "
                 "s/epoch: mean epoch time; RSS MiB: peak process memory; loss stability: lower is steadier, "
                 "defined in `finetune_pipeline/stability.py`.")
GROUP_COLUMNS = ("seed group", "runs", "seeds", "best val mean ± std", "test mean ± std", "vs reference")
CSV_COLUMNS = ("run", "run_dir", "status", "best_val_score", "test_score", "best_epoch", "wall_time_s",
               "mean_epoch_time_s", "peak_rss_mb", "loss_stability", "loss_stability_flag", "seed",
               "differs_from_reference", "seed_group", "group_seeds", "group_best_val_mean", "group_best_val_std",
               "group_test_mean", "group_test_std", "group_vs_reference")


@dataclass
class RunRecord:
    """What could be read from one run folder; a missing or broken file leaves its part empty."""

    run_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any] | None  # flattened to dotted keys; None when config.json could not be read
    losses: list[float]  # the `loss` of each `event=step` line of train.log
    problems: list[str]


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
    seed: int | None
    factors: dict[str, Any] | None  # the config without seed and path keys; None when config.json is unreadable
    differences: dict[str, tuple[Any, Any]] | None  # factor -> (reference value, this run's value)


@dataclass(frozen=True)
class Spread:
    mean: float | None
    std: float | None  # sample standard deviation (ddof=1) over two or more seeds; None otherwise


@dataclass
class SeedGroup:
    """Runs whose configs are identical except for the seed."""

    name: str  # "reference", or how the group's config differs from the reference
    rows: list[RunRow]
    best_val: Spread
    test: Spread
    vs_reference: str  # reference | within seed noise | beyond seed noise | noise unknown

    @property
    def seeds(self) -> list[int]:
        return sorted({row.seed for row in self.rows if row.seed is not None})


@dataclass
class Comparison:
    rows: list[RunRow]  # the first is the reference
    groups: list[SeedGroup]  # the first is the reference's
    warnings: list[str]
    notes: list[str]
    markdown_path: Path
    csv_path: Path
    plot_path: Path


# ---- which runs: run folders, sweep folders, glob patterns, the newest N --------------------------------------


def resolve_run_dirs(targets: list[str], last: int | None, artifacts_root: Path) -> list[Path]:
    """The run folders that targets and --last name, in order, each once."""
    found = [run_dir for target in targets for run_dir in expand_target(target)]
    if last is not None:
        found += newest_runs(Path(artifacts_root), last)
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


# ---- reading one run -------------------------------------------------------------------------------------------


def load_run_record(run_dir: Path) -> RunRecord:
    metrics, metrics_problem = read_run_file(run_dir / METRICS_FILE, "scores, status and provenance unknown")
    config, config_problem = read_run_file(run_dir / CONFIG_FILE, "its factors cannot be checked")
    losses, log_problem = read_losses(run_dir / TRAIN_LOG_FILE)
    problems = [problem for problem in (metrics_problem, config_problem, log_problem) if problem]
    return RunRecord(run_dir, metrics or {}, None if config is None else flatten(config), losses, problems)


def read_run_file(path: Path, consequence: str) -> tuple[dict[str, Any] | None, str | None]:
    """(content, None), or (None, what went wrong): a failed run may have left a file missing."""
    try:
        return read_json_object(path), None
    except FileNotFoundError:
        return None, f"{path.name} is missing: {consequence}"
    except (OSError, ValueError) as err:
        return None, f"{path.name} cannot be read ({err}): {consequence}"


def read_losses(path: Path) -> tuple[list[float], str | None]:
    try:
        return [float(event["loss"]) for event in read_events(path, "step") if "loss" in event], None
    except FileNotFoundError:
        return [], f"{path.name} is missing: loss stability unknown"
    except (OSError, ValueError) as err:
        return [], f"{path.name} cannot be read ({err}): loss stability unknown"


def is_factor(key: str) -> bool:
    return key != SEED_KEY and key not in PATH_KEYS and not key.startswith(PATH_PREFIXES)


def factors_of(record: RunRecord) -> dict[str, Any] | None:
    if record.config is None:
        return None
    frozen = record.config.get(FROZEN_BACKBONE_KEY) is True
    return {key: value for key, value in record.config.items()
            if is_factor(key) and not (frozen and key in IGNORED_WHEN_FROZEN)}


def factor_differences(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The factors whose values differ. A key that factors_of left out of one side (ignored by its frozen
    backbone) is no difference."""
    return {key: values for key, values in changed_values(reference, other).items()
            if key in reference and key in other or key not in IGNORED_WHEN_FROZEN}


# ---- rows and seed groups --------------------------------------------------------------------------------------


def summarize(record: RunRecord, reference: RunRecord) -> RunRow:
    metrics = record.metrics
    seed = metrics.get("seed", (record.config or {}).get(SEED_KEY))
    factors, reference_factors = factors_of(record), factors_of(reference)
    comparable = factors is not None and reference_factors is not None
    epoch_times = metrics.get("epoch_times_s") or []
    return RunRow(
        label=run_label(record, seed),
        run_dir=record.run_dir,
        status=run_lock.run_status(Path(record.run_dir), metrics),
        best_val_score=metrics.get("best_val_score"),
        test_score=metrics.get("test_score"),
        best_epoch=metrics.get("best_epoch"),
        wall_time_s=metrics.get("wall_time_s"),
        mean_epoch_time_s=statistics.fmean(epoch_times) if epoch_times else None,
        peak_rss_mb=(metrics.get("peak_memory_mb") or {}).get("process_rss"),
        stability=loss_stability(record.losses),
        seed=seed,
        factors=factors,
        differences=factor_differences(reference_factors, factors) if comparable else None,
    )


def run_label(record: RunRecord, seed: int | None) -> str:
    """The run folder's name, or for a sweep member its name and seed: 'hidden_dim=128 (seed 42)'."""
    member = record.metrics.get("sweep_member")
    return f"{member} (seed {seed})" if isinstance(member, str) else record.run_dir.name


def seed_groups(rows: list[RunRow]) -> list[SeedGroup]:
    """Runs with identical factors, in order of first appearance: the first group is the reference's."""
    members: dict[str, list[RunRow]] = {}
    for index, row in enumerate(rows):
        # A run whose config could not be read matches no other: it is a group of its own.
        key = f"unknown config {index}" if row.factors is None else json.dumps(row.factors, sort_keys=True)
        members.setdefault(key, []).append(row)
    spreads = [(group_rows, score_spread(group_rows, "best_val_score"), score_spread(group_rows, "test_score"))
               for group_rows in members.values()]
    reference_best_val = spreads[0][1]
    return [
        SeedGroup(group_name(group_rows[0], is_reference=index == 0), group_rows, best_val, test,
                  REFERENCE if index == 0 else noise_verdict(best_val, reference_best_val))
        for index, (group_rows, best_val, test) in enumerate(spreads)
    ]


def group_name(row: RunRow, is_reference: bool) -> str:
    if is_reference:
        return REFERENCE
    if row.differences is None:
        return f"{row.label} (config unknown)"
    return describe_changes(row.differences)


def score_spread(rows: list[RunRow], score: str) -> Spread:
    values = [getattr(row, score) for row in rows if getattr(row, score) is not None]
    if not values:
        return Spread(None, None)
    several_seeds = len({row.seed for row in rows}) >= 2  # reruns with one seed measure no seed noise
    return Spread(statistics.fmean(values), statistics.stdev(values) if several_seeds and len(values) >= 2 else None)


def noise_verdict(group: Spread, reference: Spread) -> str:
    """Within seed noise when the means differ by less than the larger of the two groups' standard deviations."""
    noise = seed_noise(group, reference)
    if group.mean is None or reference.mean is None or noise is None:
        return NOISE_UNKNOWN
    return WITHIN_NOISE if abs(group.mean - reference.mean) < noise else BEYOND_NOISE


def seed_noise(group: Spread, reference: Spread) -> float | None:
    """The larger of the two standard deviations; the known one when a group ran one seed only."""
    stds = [spread.std for spread in (group, reference) if spread.std is not None]
    return max(stds) if stds else None


def has_seed_groups(groups: list[SeedGroup]) -> bool:
    return any(len(group.seeds) >= 2 for group in groups)


# ---- warnings and notes ----------------------------------------------------------------------------------------


def find_warnings(records: list[RunRecord], rows: list[RunRow], groups: list[SeedGroup]) -> list[str]:
    return [
        *(f"run {row.label}: {problem}"
          for record, row in zip(records, rows, strict=True) for problem in record.problems),
        *(f"run {row.label} is {row.status}, not {COMPLETED}: its scores are partial or missing"
          for row in rows if row.status != COMPLETED),
        *factor_warnings(groups),
        *seed_warnings(groups),
        *provenance_warnings(rows, [data_identity(record) for record in records], "data", "data_files",
                             "scores on different data are not comparable"),
        *provenance_warnings(rows, [backbone_identity(record) for record in records], "backbone", "backbone_sha256",
                             "another backbone changes the scores by itself; fine only as the one factor studied"),
        *provenance_warnings(rows, [code_identity(record) for record in records], "code version",
                             "code_version", "the code changed between the runs, which can change results by itself"),
        *provenance_warnings(rows, [hardware_identity(record) for record in records], "device or precision",
                             "mixed_precision", "another device or precision changes speed, memory and the "
                             "numbers themselves"),
    ]


def factor_warnings(groups: list[SeedGroup]) -> list[str]:
    """One warning per config (the runs of a seed group share their differences), not one per seed."""
    reference = groups[0].rows[0]
    warnings = []
    for group in groups[1:]:
        differences = group.rows[0].differences
        if differences is not None and len(differences) > 1:
            runs = f"run {group.rows[0].label}" if len(group.rows) == 1 else f"runs {run_labels(group)}"
            warnings.append(f"{runs} differ{'s' if len(group.rows) == 1 else ''} from the reference "
                            f"{reference.label} in {len(differences)} factors: {describe_changes(differences)} — "
                            "the comparison does not isolate one effect")
    return warnings


def seed_warnings(groups: list[SeedGroup]) -> list[str]:
    """Different configs must run with the same seeds; several seeds of one config are a seed group, not a warning."""
    reference = groups[0]
    return [
        f"seeds differ: {run_labels(group)} ran with seed {format_seeds(group.seeds)}, the reference "
        f"{run_labels(reference)} with seed {format_seeds(reference.seeds)} — a different seed alone moves the "
        "scores; run both with the same seed(s)"
        for group in groups[1:] if group.seeds and reference.seeds and group.seeds != reference.seeds
    ]


def data_identity(record: RunRecord) -> dict[str, str | None] | None:
    """split -> sha256 of its file (None for a split carved out of the train file); None for runs without it."""
    data_files = record.metrics.get("data_files")
    if not isinstance(data_files, dict):
        return None
    return {split: (entry or {}).get("sha256") for split, entry in data_files.items()}


def backbone_identity(record: RunRecord) -> dict[str, Any] | None:
    """The backbone's name and a sha256 over all its weights; None when the run did not record the weights."""
    sha256 = record.metrics.get("backbone_sha256")
    return None if sha256 is None else {"model.backbone": (record.config or {}).get("model.backbone"),
                                        "backbone_sha256": sha256}


def code_identity(record: RunRecord) -> dict[str, Any] | None:
    """The package version and its source's sha256; runs recorded before that hash existed fall back to the
    git commit (where a commit that changed only documentation still counts as a change)."""
    version = record.metrics.get("code_version")
    if not isinstance(version, dict) or not version.get("source_sha256"):
        return version
    return {"package": version.get("package"), "source_sha256": version["source_sha256"]}


def hardware_identity(record: RunRecord) -> dict[str, Any] | None:
    """Where the run computed and in which precision it really ran (a CPU may run bf16 or fp32 for "fp16")."""
    precision = record.metrics.get("mixed_precision")
    if not isinstance(precision, dict):
        return None
    return {"device": record.metrics.get("device"), "precision used": precision.get("used")}


def provenance_warnings(rows: list[RunRow], identities: list[dict[str, Any] | None], what: str, field: str,
                        consequence: str) -> list[str]:
    """A warning per run whose identity differs from the reference's, and one for the runs that could not be checked."""
    reference, reference_identity = rows[0], identities[0]
    unchecked = [row.label for row, identity in zip(rows, identities, strict=True) if identity is None]
    warnings = [f"{what} could not be checked for run(s) {', '.join(unchecked)}: their {METRICS_FILE} has no {field} "
                "(an older run, or one that stopped early)"] if unchecked else []
    for row, identity in zip(rows[1:], identities[1:], strict=True):
        if reference_identity is not None and identity is not None and identity != reference_identity:
            warnings.append(f"{what} differs: run {row.label} vs the reference {reference.label}: "
                            f"{describe_changes(changed_values(reference_identity, identity))} — {consequence}")
    return warnings


def find_notes(records: list[RunRecord], rows: list[RunRow], groups: list[SeedGroup]) -> list[str]:
    notes = [noise_note(group, groups[0]) for group in groups if group.vs_reference == WITHIN_NOISE]
    if not has_seed_groups(groups):
        notes.append("seed noise is unknown: every config ran with one seed. To measure it run the same config with "
                     f"several seeds, e.g. `{SEEDS_EXAMPLE}`, and compare differences against the spread")
    dirty = [row.label for record, row in zip(records, rows, strict=True)
             if (record.metrics.get("code_version") or {}).get("git_dirty")]
    if dirty:
        notes.append(f"run(s) {', '.join(dirty)} ran code with uncommitted changes: runs from the same commit may "
                     "still have run different code")
    return notes


def noise_note(group: SeedGroup, reference: SeedGroup) -> str:
    difference = abs(group.best_val.mean - reference.best_val.mean)
    return (f"{group.name} vs the reference: mean best_val_score differs by {difference:.4f}, less than the seed "
            f"noise (std {seed_noise(group.best_val, reference.best_val):.4f}): {WITHIN_NOISE}, "
            "not evidence of an effect")


# ---- formatting ------------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A config or provenance value for people: strings bare, sha256 digests shortened, the rest as JSON."""
    if isinstance(value, str):
        return f"{value[:SHA256_SHOWN]}…" if SHA256_PATTERN.fullmatch(value) else value
    return json.dumps(value)


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """'model.hidden_dim: 256 → 128; model.dropout: 0.1 → 0.2'."""
    return "; ".join(f"{key}: {format_value(old)} → {format_value(new)}" for key, (old, new) in changes.items())


def format_number(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def format_spread(spread: Spread) -> str:
    if spread.std is None:
        return format_number(spread.mean, 4)
    return f"{spread.mean:.4f} ± {spread.std:.4f}"


def format_seeds(seeds: list[int]) -> str:
    return ",".join(map(str, seeds)) or MISSING


def run_labels(group: SeedGroup) -> str:
    return ", ".join(row.label for row in group.rows)


def differences_cell(row: RunRow, is_reference: bool) -> str:
    if is_reference:
        return f"({REFERENCE})"
    if row.differences is None:
        return "unknown (no readable config.json)"
    return describe_changes(row.differences) or "no factor (same config)"


def stability_cell(stability: Stability) -> str:
    return stability.flag if stability.value is None else f"{stability.value:.3f} {stability.flag}"


def run_cells(rows: list[RunRow]) -> list[list[str]]:
    return [
        [row.label, row.status, format_number(row.best_val_score, 4), format_number(row.test_score, 4),
         MISSING if row.best_epoch is None else str(row.best_epoch), format_number(row.wall_time_s, 1),
         format_number(row.mean_epoch_time_s, 1), format_number(row.peak_rss_mb, 0), stability_cell(row.stability),
         MISSING if row.seed is None else str(row.seed), differences_cell(row, is_reference=index == 0)]
        for index, row in enumerate(rows)
    ]


def group_cells(groups: list[SeedGroup]) -> list[list[str]]:
    # the number of runs, not their labels: a group's runs are the rows above that share its config
    return [[group.name, str(len(group.rows)), format_seeds(group.seeds), format_spread(group.best_val),
             format_spread(group.test), group.vs_reference] for group in groups]


# ---- compare.md, compare.csv, compare.png ----------------------------------------------------------------------


def compare_runs(run_dirs: list[Path], output_dir: Path) -> Comparison:
    """Load the runs, check the comparison's fairness, and write compare.md, compare.csv and compare.png."""
    if not run_dirs:
        raise UserInputError("nothing to compare: no run folders given")
    records = [load_run_record(Path(run_dir)) for run_dir in run_dirs]
    rows = [summarize(record, records[0]) for record in records]
    groups = seed_groups(rows)
    output_dir = Path(output_dir)
    comparison = Comparison(rows, groups, find_warnings(records, rows, groups), find_notes(records, rows, groups),
                            output_dir / MARKDOWN_FILE, output_dir / CSV_FILE, output_dir / PLOT_FILE)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(comparison.markdown_path, markdown_report(comparison))
    write_text(comparison.csv_path, csv_report(comparison))
    plot_overlay([run_curves(row) for row in rows], comparison.plot_path)
    return comparison


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def run_curves(row: RunRow) -> RunCurves:
    """The run's curves; none for a run whose files cannot be parsed (its warning already says so)."""
    try:
        return read_run_curves(row.run_dir, row.label)
    except (OSError, ValueError, KeyError):
        return RunCurves(row.label, steps=[], losses=[], learning_rates=[], epochs=[], val_scores=[],
                         metric=DEFAULT_METRIC_NAME)


def markdown_report(comparison: Comparison) -> str:
    reference = comparison.rows[0]
    lines = [f"# Comparison of {len(comparison.rows)} runs", "",
             f"Reference: **{reference.label}** (`{reference.run_dir}`), the first run; the others are compared "
             "with it.",
             ""]
    lines += [f"- **WARNING:** {warning}" for warning in comparison.warnings] or [no_warnings_text()]
    if comparison.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in comparison.notes)]
    lines += ["", "## Runs", "", *markdown_table(RUN_COLUMNS, run_cells(comparison.rows))]
    if has_seed_groups(comparison.groups):
        lines += ["", "## Seed groups", "", *markdown_table(GROUP_COLUMNS, group_cells(comparison.groups))]
    lines += ["", COLUMN_LEGEND, "",
              "## Curves", "", f"![train loss and val score of every run]({PLOT_FILE})", ""]
    return "\n".join(lines)


def no_warnings_text() -> str:
    return ("No warnings: every run differs from the reference in one factor at most, with the same seeds, data, "
            "backbone and code.")


def markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + " --- |" * len(header), *map(line, rows)]


def csv_report(comparison: Comparison) -> str:
    group_of = {id(row): group for group in comparison.groups for row in group.rows}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for index, row in enumerate(comparison.rows):
        group = group_of[id(row)]
        writer.writerow([
            row.label, row.run_dir, row.status, row.best_val_score, row.test_score, row.best_epoch, row.wall_time_s,
            row.mean_epoch_time_s, row.peak_rss_mb, row.stability.value, row.stability.flag, row.seed,
            differences_cell(row, is_reference=index == 0), group.name, format_seeds(group.seeds), group.best_val.mean,
            group.best_val.std, group.test.mean, group.test.std, group.vs_reference,
        ])  # None is written as an empty cell
    return buffer.getvalue()


# ---- the console -----------------------------------------------------------------------------------------------


def print_comparison(comparison: Comparison) -> None:
    # rich assumes 80 columns when the output is not a terminal (a file, CI): too narrow for the table
    console = Console(width=None if sys.stdout.isatty() else PIPED_OUTPUT_WIDTH)
    # The differences are the longest cells: listed under the table, they leave it the console's width.
    cells = run_cells(comparison.rows)
    console.print(rich_table("runs (the first is the reference)", RUN_COLUMNS[:-1], [row[:-1] for row in cells]))
    console.print(Text(f"{RUN_COLUMNS[-1]}:", style="bold"))
    for row in cells:
        console.print(Text(f"  {row[0]}: {row[-1]}"))
    if has_seed_groups(comparison.groups):
        console.print(rich_table("seed groups", GROUP_COLUMNS, group_cells(comparison.groups)))
    for note in comparison.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    console.print(Text(f"written: {comparison.markdown_path}, {comparison.csv_path}, {comparison.plot_path}"))
    if not comparison.warnings:
        console.print(Text(no_warnings_text(), style="green"))
        return
    # Last on the screen, so that they are what the student sees when the command ends.
    console.print(Text(f"{len(comparison.warnings)} WARNING(S): this comparison is not fair as it stands",
                       style="bold red"))
    for warning in comparison.warnings:
        console.print(Text(f"WARNING: {warning}", style="bold red"))


def rich_table(title: str, header: tuple[str, ...], rows: list[list[str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAVY)
    for name in header:
        # fold: a value too long for a narrow console goes on more lines instead of being cut with "…"
        table.add_column(name, justify="right" if name in NUMBER_COLUMNS else "left", overflow="fold")
    for cells in rows:
        table.add_row(*map(Text, cells))  # Text: a value like "[0.1]" is shown as is, not read as markup
    return table
