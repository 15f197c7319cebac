"""`finetune compare`: runs side by side, with a loud WARNING wherever the comparison is not fair.

A fair comparison changes one factor at a time: one config value differs from the reference (the
run given with --ref, else the first run), and the seed, the data, the backbone and the code are the
same. Each breach is reported as a warning that names the runs and the values.

Three things keep a difference from being taken for an effect:
- Repeats are one sample. Runs that agree in config, seed, data, backbone, code and device are the
  same measurement taken again (on a CPU they give identical scores); they are shown once, as `×N`.
- Seed groups: runs whose configs differ only in the seed. The spread over their distinct seeds is
  the seed noise, and a difference between two groups is "within seed noise" unless Welch's t-test
  rejects it at 5% (|difference of the means| >= t(0.975, df) x its standard error), so that more
  seeds make a smaller difference detectable. With fewer than 2 distinct seeds on a side the noise is
  unknown, and the notes give the command that measures it on these very runs.
- The resolution of the val set: one example moves accuracy by 1/size. A difference of fewer than
  RESOLUTION_EXAMPLES val examples is "below resolution", whatever the seeds say.

The output folder gets compare.md (warnings first, then the tables), compare.csv (one row per run,
with its seed group's numbers repeated on the row, so that it loads as one table) and compare.png
(the runs' curves overlaid).
"""

import csv
import glob
import io
import json
import math
import re
import shlex
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from rich import box
from scipy import stats
from rich.console import Console
from rich.table import Table
from rich.text import Text

from finetune_pipeline import run_lock
from finetune_pipeline.artifacts import CONFIG_FILE, METRICS_FILE, TRAIN_LOG_FILE, read_json_object, write_atomically
from finetune_pipeline.config import changed_values, flatten
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.plots import DEFAULT_METRIC_NAME, RunCurves, plot_overlay, read_run_curves
from finetune_pipeline.resolution import RESOLUTION_EXAMPLES, below_resolution, describe_resolution, in_examples
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
BELOW_RESOLUTION = "below resolution"
SEEDS_WANTED = 3  # the seeds the advice asks for per config: the fewest that give a spread and a t-test
SIGNIFICANCE = 0.05  # two-sided level of the Welch test behind "beyond seed noise"

MISSING = "—"
PIPED_OUTPUT_WIDTH = 160
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
SHA256_SHOWN = 12  # characters of a digest shown to people; comparisons use all 64

# Short headers, so that the table fits an 80-column terminal; compare.md explains them under the table.
RUN_COLUMNS = ("run", "status", "best val", "Δ val", "test", "best epoch", "time s", "s/epoch", "RSS MiB",
               "loss stability", "seed", "differs from reference in")
NUMBER_COLUMNS = {"best val", "Δ val", "test", "best epoch", "time s", "s/epoch", "RSS MiB", "seed"}
COLUMN_LEGEND = ("best val: best_val_score; Δ val: best val minus the reference's, and how many val examples that "
                 "is; test: test_score (the best epoch's checkpoint); time s: the whole run; s/epoch: mean epoch "
                 "time; RSS MiB: peak process memory; loss stability: lower is steadier, defined in "
                 "`finetune_pipeline/stability.py`; ×N: N repeats of one run (same config, seed, data, backbone, "
                 "code and device), counted once.")
GROUP_COLUMNS = ("seed group", "seeds", "best val mean ± std", "test mean ± std", "difference", "noise threshold",
                 "vs reference")
CSV_COLUMNS = ("run", "run_dir", "repeat_of", "status", "best_val_score", "test_score", "best_epoch", "wall_time_s",
               "mean_epoch_time_s", "peak_rss_mb", "loss_stability", "loss_stability_flag", "seed",
               "differs_from_reference", "delta_val", "delta_val_examples", "seed_group", "group_seeds",
               "group_best_val_mean", "group_best_val_std", "group_test_mean", "group_test_std",
               "group_difference", "group_noise_threshold", "group_vs_reference")


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
    split_sizes: dict[str, int]  # split -> number of texts; {} when metrics.json did not record them
    metric: str
    repeat_key: str  # equal for runs that are repeats of one another


@dataclass
class Sample:
    """One measurement: a run, and the runs that repeat it exactly (same config, seed, data, backbone, code and
    device). Its scores are the mean over the repeats, which on a CPU are identical."""

    rows: list[RunRow]

    @property
    def first(self) -> RunRow:
        return self.rows[0]

    @property
    def label(self) -> str:
        return self.first.label if len(self.rows) == 1 else f"{self.first.label} ×{len(self.rows)}"

    def score(self, name: str) -> float | None:
        values = [getattr(row, name) for row in self.rows if getattr(row, name) is not None]
        return statistics.fmean(values) if values else None

    @property
    def scores_identical(self) -> bool:
        return all(len({getattr(row, name) for row in self.rows}) == 1 for name in ("best_val_score", "test_score"))


@dataclass(frozen=True)
class Spread:
    mean: float | None
    std: float | None  # sample standard deviation (ddof=1) over two or more distinct seeds; None otherwise
    seeds: int  # how many distinct seeds the mean is over


@dataclass
class SeedGroup:
    """The samples whose configs are identical except for the seed."""

    name: str  # "reference", or how the group's config differs from the reference
    samples: list[Sample]
    best_val: Spread
    test: Spread
    difference: float | None  # mean best val minus the reference group's
    threshold: float | None  # the smallest |difference| that is beyond seed noise; None when noise is unknown
    vs_reference: str  # reference | below resolution | within seed noise | beyond seed noise | noise unknown

    @property
    def rows(self) -> list[RunRow]:
        return [row for sample in self.samples for row in sample.rows]

    @property
    def seeds(self) -> list[int]:
        return sorted({row.seed for row in self.rows if row.seed is not None})


@dataclass
class Comparison:
    rows: list[RunRow]  # every run; the first is the reference
    samples: list[Sample]  # the runs with repeats collapsed, as the tables show them; the first is the reference's
    groups: list[SeedGroup]  # the first is the reference's
    warnings: list[str]
    notes: list[str]
    resolution: list[str]  # per split, what one example is worth
    reference_given: bool  # chosen with --ref, not by position
    markdown_path: Path
    csv_path: Path
    plot_path: Path


# ---- which runs: run folders, sweep folders, glob patterns, the newest N --------------------------------------


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


# ---- rows, repeats and seed groups -----------------------------------------------------------------------------


def summarize(record: RunRecord, reference: RunRecord) -> RunRow:
    metrics = record.metrics
    seed = metrics.get("seed", (record.config or {}).get(SEED_KEY))
    factors, reference_factors = factors_of(record), factors_of(reference)
    comparable = factors is not None and reference_factors is not None
    epoch_times = metrics.get("epoch_times_s") or []
    status = run_lock.run_status(Path(record.run_dir), metrics)
    sizes = metrics.get("split_sizes")
    return RunRow(
        label=run_label(record, seed),
        run_dir=record.run_dir,
        status=status,
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
        split_sizes={split: size for split, size in (sizes or {}).items() if isinstance(size, int) and size > 0},
        metric=str(metrics.get("metric") or DEFAULT_METRIC_NAME),
        repeat_key=json.dumps([status, seed, factors, data_identity(record), backbone_identity(record),
                               code_identity(record), hardware_identity(record)], sort_keys=True, default=str)
        if factors is not None else f"unknown config {record.run_dir}",  # an unreadable config repeats nothing
    )


def run_label(record: RunRecord, seed: int | None) -> str:
    """The run folder's name, or for a sweep member its name and seed: 'hidden_dim=128 (seed 42)'."""
    member = record.metrics.get("sweep_member")
    return f"{member} (seed {seed})" if isinstance(member, str) else record.run_dir.name


def collapse_repeats(rows: list[RunRow]) -> list[Sample]:
    """Runs that repeat one another exactly become one sample, in order of first appearance."""
    samples: dict[str, Sample] = {}
    for row in rows:
        samples.setdefault(row.repeat_key, Sample([])).rows.append(row)
    return list(samples.values())


def seed_groups(samples: list[Sample]) -> list[SeedGroup]:
    """Samples with identical factors, in order of first appearance: the first group is the reference's."""
    members: dict[str, list[Sample]] = {}
    for index, sample in enumerate(samples):
        # A run whose config could not be read matches no other: it is a group of its own.
        factors = sample.first.factors
        key = f"unknown config {index}" if factors is None else json.dumps(factors, sort_keys=True)
        members.setdefault(key, []).append(sample)
    spreads = [(group_samples, seed_spread(group_samples, "best_val_score"), seed_spread(group_samples, "test_score"))
               for group_samples in members.values()]
    reference_best_val = spreads[0][1]
    val_size = samples[0].first.split_sizes.get("val")
    groups = [SeedGroup(REFERENCE, spreads[0][0], spreads[0][1], spreads[0][2], None, None, REFERENCE)]
    for group_samples, best_val, test in spreads[1:]:
        difference = (None if best_val.mean is None or reference_best_val.mean is None
                      else best_val.mean - reference_best_val.mean)
        threshold = welch_threshold(best_val, reference_best_val)
        groups.append(SeedGroup(group_name(group_samples[0].first), group_samples, best_val, test, difference,
                                threshold, verdict(difference, threshold, val_size)))
    return groups


def group_name(row: RunRow) -> str:
    if row.differences is None:
        return f"{row.label} (config unknown)"
    return describe_changes(row.differences) or "no factor (same config)"


def seed_spread(samples: list[Sample], score: str) -> Spread:
    """Mean and sample std over distinct seeds: samples with one seed (which differ only in code, data or device,
    each of which has its warning) are averaged into that seed's one value first."""
    by_seed: dict[Any, list[float]] = {}
    for sample in samples:
        value = sample.score(score)
        if value is not None:
            by_seed.setdefault(sample.first.seed, []).append(value)
    values = [statistics.fmean(seed_values) for seed_values in by_seed.values()]
    if not values:
        return Spread(None, None, 0)
    return Spread(statistics.fmean(values), statistics.stdev(values) if len(values) >= 2 else None, len(values))


def welch_threshold(group: Spread, reference: Spread) -> float | None:
    """The smallest difference of the means that Welch's t-test calls significant at SIGNIFICANCE (two-sided):
    t(1 - SIGNIFICANCE/2, Welch's df) x the standard error of the difference. None with fewer than 2 seeds on
    a side, where the noise is not measured."""
    if group.std is None or reference.std is None:
        return None
    variances = [spread.std ** 2 / spread.seeds for spread in (group, reference)]
    standard_error = math.sqrt(sum(variances))
    if standard_error == 0:
        return 0.0  # every seed gave the same score on both sides: any difference is beyond the (zero) noise
    degrees_of_freedom = standard_error ** 4 / sum(
        variance ** 2 / (spread.seeds - 1) for variance, spread in zip(variances, (group, reference), strict=True))
    return float(stats.t.ppf(1 - SIGNIFICANCE / 2, degrees_of_freedom)) * standard_error


def verdict(difference: float | None, threshold: float | None, val_size: int | None) -> str:
    """Below the val set's resolution first (seeds cannot make one example meaningful), then Welch's test."""
    if difference is None:
        return NOISE_UNKNOWN
    if val_size is not None and below_resolution(difference, val_size):
        return BELOW_RESOLUTION
    if threshold is None:
        return NOISE_UNKNOWN
    return WITHIN_NOISE if abs(difference) < threshold else BEYOND_NOISE


def has_seed_groups(groups: list[SeedGroup]) -> bool:
    return any(len(group.seeds) >= 2 for group in groups)


# ---- warnings and notes ----------------------------------------------------------------------------------------


def find_warnings(records: list[RunRecord], rows: list[RunRow], samples: list[Sample],
                  groups: list[SeedGroup]) -> list[str]:
    record_of = {id(row): record for record, row in zip(records, rows, strict=True)}
    sample_records = [record_of[id(sample.first)] for sample in samples]
    labels = [sample.label for sample in samples]

    def provenance(identity: Callable[[RunRecord], dict[str, Any] | None], what: str, field: str,
                   consequence: str) -> list[str]:
        return provenance_warnings(labels, [identity(record) for record in sample_records], what, field, consequence)

    return [
        *(f"run {row.label}: {problem}"
          for record, row in zip(records, rows, strict=True) for problem in record.problems),
        *(f"run {sample.label} is {sample.first.status}, not {COMPLETED}: its scores are partial or missing"
          for sample in samples if sample.first.status != COMPLETED),
        *factor_warnings(groups),
        *seed_warnings(groups),
        *provenance(data_identity, "data", "data_files", "scores on different data are not comparable"),
        *provenance(backbone_identity, "backbone", "backbone_sha256",
                    "another backbone changes the scores by itself; fine only as the one factor studied"),
        *provenance(code_identity, "code version", "code_version",
                    "the code changed between the runs, which can change results by itself"),
        *provenance(hardware_identity, "device or precision", "mixed_precision",
                    "another device or precision changes speed, memory and the numbers themselves"),
    ]


def factor_warnings(groups: list[SeedGroup]) -> list[str]:
    """One warning per config (the runs of a seed group share their differences), not one per seed."""
    reference = groups[0].samples[0]
    warnings = []
    for group in groups[1:]:
        differences = group.rows[0].differences
        if differences is not None and len(differences) > 1:
            one = len(group.samples) == 1
            runs = f"run {group.samples[0].label}" if one else f"runs {run_labels(group)}"
            warnings.append(f"{runs} differ{'s' if one else ''} from the reference {reference.label} in "
                            f"{len(differences)} factors: {describe_changes(differences)} — "
                            "the comparison does not isolate one effect")
    return warnings


def seed_warnings(groups: list[SeedGroup]) -> list[str]:
    """Different configs must run with the same seeds; several seeds of one config are a seed group, not a warning.
    One side's seeds among the other's (42 against 42,43,44) is no warning either: the runs with a shared seed
    compare fairly, and the notes say how to measure the noise of the side with fewer."""
    reference = groups[0]
    return [
        f"seeds differ: {run_labels(group)} ran with seed {format_seeds(group.seeds)}, the reference "
        f"{run_labels(reference)} with seed {format_seeds(reference.seeds)} — a different seed alone moves the "
        "scores; run both with the same seed(s)"
        for group in groups[1:] if group.seeds and reference.seeds
        and not (set(group.seeds) <= set(reference.seeds) or set(reference.seeds) <= set(group.seeds))
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


def provenance_warnings(labels: list[str], identities: list[dict[str, Any] | None], what: str, field: str,
                        consequence: str) -> list[str]:
    """A warning per run whose identity differs from the reference's, and one for the runs that could not be checked."""
    reference, reference_identity = labels[0], identities[0]
    unchecked = [label for label, identity in zip(labels, identities, strict=True) if identity is None]
    warnings = [f"{what} could not be checked for run(s) {', '.join(unchecked)}: their {METRICS_FILE} has no {field} "
                "(an older run, or one that stopped early)"] if unchecked else []
    for label, identity in zip(labels[1:], identities[1:], strict=True):
        if reference_identity is not None and identity is not None and identity != reference_identity:
            warnings.append(f"{what} differs: run {label} vs the reference {reference}: "
                            f"{describe_changes(changed_values(reference_identity, identity))} — {consequence}")
    return warnings


def find_notes(records: list[RunRecord], rows: list[RunRow], samples: list[Sample],
               groups: list[SeedGroup]) -> list[str]:
    notes = [repeat_note(sample) for sample in samples if len(sample.rows) > 1]
    notes += [verdict_note(group, groups[0], samples[0].first.split_sizes.get("val")) for group in groups[1:]
              if group.vs_reference in (BELOW_RESOLUTION, WITHIN_NOISE, BEYOND_NOISE)]
    notes += seed_advice(groups)
    dirty = [row.label for record, row in zip(records, rows, strict=True)
             if (record.metrics.get("code_version") or {}).get("git_dirty")]
    if dirty:
        notes.append(f"run(s) {', '.join(dirty)} ran code with uncommitted changes: runs from the same commit may "
                     "still have run different code")
    return notes


def repeat_note(sample: Sample) -> str:
    others = ", ".join(row.label for row in sample.rows[1:])
    note = (f"{sample.label}: {len(sample.rows)} runs with the same config, seed, data, backbone, code and device "
            f"(also {others}) are repeats of one run, counted as one sample, not as {len(sample.rows)} seeds; ")
    if sample.scores_identical:
        return note + "their scores are identical, as they should be"
    values = sorted(row.best_val_score for row in sample.rows if row.best_val_score is not None)
    spread = f"best val {values[0]:.4f} to {values[-1]:.4f}" if values else "test scores differ"
    return note + (f"their scores differ ({spread}): the runs were not bit-for-bit deterministic (a GPU, another "
                   "number of threads); the mean over the repeats is used")


def verdict_note(group: SeedGroup, reference: SeedGroup, val_size: int | None) -> str:
    examples = ("" if val_size is None
                else f", {abs(in_examples(group.difference, val_size)):.1f} of {val_size} val examples")
    head = f"{group.name} vs the reference: mean best val differs by {group.difference:+.4f}{examples}"
    if group.vs_reference == BELOW_RESOLUTION:
        return (f"{head}: {BELOW_RESOLUTION} of the val set (fewer than {RESOLUTION_EXAMPLES} examples), whatever the "
                "seeds say; no evidence of an effect")
    test = (f"Welch's t-test at {SIGNIFICANCE:.0%}, {group.best_val.seeds} vs {reference.best_val.seeds} seeds, "
            f"seed std {format_number(group.best_val.std, 4)} and {format_number(reference.best_val.std, 4)}")
    if group.vs_reference == WITHIN_NOISE:
        return (f"{head}, less than the noise threshold {group.threshold:.4f} ({test}): {WITHIN_NOISE}, not evidence "
                "of an effect")
    return (f"{head}, at least the noise threshold {group.threshold:.4f} ({test}): {BEYOND_NOISE}, likely a real "
            "effect; with few seeds a hint rather than proof")


def seed_advice(groups: list[SeedGroup]) -> list[str]:
    """For the configs with fewer than 2 distinct seeds: the command that reruns those very runs with the seeds
    they lack, so that the noise is measured on the data and config in question."""
    lacking = [group for group in groups if len(group.seeds) < 2 and group.samples[0].first.factors is not None]
    if not lacking:
        return []
    seen = sorted({seed for group in groups for seed in group.seeds})
    wanted = seen[:]
    while len(wanted) < SEEDS_WANTED:
        wanted.append(max(wanted, default=41) + 1)
    commands: dict[tuple[int, ...], list[RunRow]] = {}
    for group in lacking:
        missing = tuple(seed for seed in wanted if seed not in group.seeds)
        commands.setdefault(missing, []).append(group.samples[0].first)
    suggested = "; ".join(
        "finetune sweep " + " ".join(f"--from-run {shlex.quote(str(row.run_dir))}" for row in runs)
        + f" --seeds {format_seeds(list(missing))}" for missing, runs in commands.items())
    who = ", ".join(f"the reference ({group.samples[0].label})" if group is groups[0] else group.name
                    for group in lacking)
    return [f"seed noise is unknown for {who}: fewer than 2 distinct seeds. Measure it on these very runs: "
            f"`{suggested}`, then compare again with the sweep folder it prints added and "
            f"--ref {shlex.quote(str(groups[0].samples[0].first.run_dir))}"]


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
    return ", ".join(sample.label for sample in group.samples)


def differences_cell(row: RunRow, is_reference: bool) -> str:
    if is_reference:
        return f"({REFERENCE})"
    if row.differences is None:
        return "unknown (no readable config.json)"
    return describe_changes(row.differences) or "no factor (same config)"


def stability_cell(stability: Stability) -> str:
    return stability.flag if stability.value is None else f"{stability.value:.3f} {stability.flag}"


def val_difference(sample: Sample, reference: Sample) -> tuple[float | None, float | None]:
    """(best val minus the reference's, that difference in val examples); None where unknown."""
    value, reference_value = sample.score("best_val_score"), reference.score("best_val_score")
    if value is None or reference_value is None:
        return None, None
    val_size = reference.first.split_sizes.get("val")
    return value - reference_value, None if val_size is None else in_examples(value - reference_value, val_size)


def delta_cell(sample: Sample, reference: Sample) -> str:
    if sample is reference:
        return MISSING
    difference, examples = val_difference(sample, reference)
    if difference is None:
        return MISSING
    return f"{difference:+.4f}" + ("" if examples is None else f" ({examples:+.0f} ex)")


def run_cells(samples: list[Sample]) -> list[list[str]]:
    reference = samples[0]
    return [
        [sample.label, row.status, format_number(sample.score("best_val_score"), 4), delta_cell(sample, reference),
         format_number(sample.score("test_score"), 4), MISSING if row.best_epoch is None else str(row.best_epoch),
         format_number(row.wall_time_s, 1), format_number(row.mean_epoch_time_s, 1), format_number(row.peak_rss_mb, 0),
         stability_cell(row.stability), MISSING if row.seed is None else str(row.seed),
         differences_cell(row, is_reference=sample is reference)]
        for sample in samples for row in [sample.first]
    ]


def group_cells(groups: list[SeedGroup]) -> list[list[str]]:
    return [[group.name, format_seeds(group.seeds), format_spread(group.best_val), format_spread(group.test),
             MISSING if group.difference is None else f"{group.difference:+.4f}",
             format_number(group.threshold, 4), group.vs_reference] for group in groups]


def resolution_lines(reference: RunRow) -> list[str]:
    lines = [describe_resolution(split, reference.split_sizes[split], reference.metric)
             for split in ("val", "test") if split in reference.split_sizes]
    if not lines:
        return [f"resolution unknown: the reference's {METRICS_FILE} has no split_sizes"]
    return lines + [f"a difference of fewer than {RESOLUTION_EXAMPLES} val examples is {BELOW_RESOLUTION}"]


# ---- compare.md, compare.csv, compare.png ----------------------------------------------------------------------


def compare_runs(run_dirs: list[Path], output_dir: Path, reference_given: bool = False) -> Comparison:
    """Load the runs (the first is the reference), check the comparison's fairness, and write compare.md,
    compare.csv and compare.png."""
    if not run_dirs:
        raise UserInputError("nothing to compare: no run folders given")
    records = [load_run_record(Path(run_dir)) for run_dir in run_dirs]
    rows = [summarize(record, records[0]) for record in records]
    samples = collapse_repeats(rows)
    groups = seed_groups(samples)
    output_dir = Path(output_dir)
    comparison = Comparison(rows, samples, groups, find_warnings(records, rows, samples, groups),
                            find_notes(records, rows, samples, groups), resolution_lines(rows[0]), reference_given,
                            output_dir / MARKDOWN_FILE, output_dir / CSV_FILE, output_dir / PLOT_FILE)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(comparison.markdown_path, markdown_report(comparison))
    write_text(comparison.csv_path, csv_report(comparison))
    plot_overlay([run_curves(sample) for sample in samples], comparison.plot_path)
    return comparison


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def run_curves(sample: Sample) -> RunCurves:
    """The run's curves (a repeat's are the same); none for a run whose files cannot be parsed (its warning
    already says so)."""
    try:
        return read_run_curves(sample.first.run_dir, sample.label)
    except (OSError, ValueError, KeyError):
        return RunCurves(sample.label, steps=[], losses=[], learning_rates=[], epochs=[], val_scores=[],
                         metric=DEFAULT_METRIC_NAME)


def reference_text(comparison: Comparison) -> str:
    reference = comparison.samples[0]
    how = "given with --ref" if comparison.reference_given else "the first run; choose another with --ref RUN_DIR"
    return f"Reference: **{reference.label}** (`{reference.first.run_dir}`), {how}. The others are compared with it."


def markdown_report(comparison: Comparison) -> str:
    lines = [f"# Comparison of {len(comparison.rows)} runs", "", reference_text(comparison), ""]
    lines += [f"- **WARNING:** {warning}" for warning in comparison.warnings] or [no_warnings_text()]
    if comparison.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in comparison.notes)]
    lines += ["", "## Resolution", "", *(f"- {line}" for line in comparison.resolution)]
    lines += ["", "## Runs", "", *markdown_table(RUN_COLUMNS, run_cells(comparison.samples))]
    if has_seed_groups(comparison.groups):
        lines += ["", "## Seed groups", "", *markdown_table(GROUP_COLUMNS, group_cells(comparison.groups)), "",
                  SEED_GROUP_LEGEND]
    lines += ["", COLUMN_LEGEND, "",
              "## Curves", "", f"![train loss and val score of every run]({PLOT_FILE})", ""]
    return "\n".join(lines)


SEED_GROUP_LEGEND = (f"Mean ± sample std over distinct seeds (repeats count once). noise threshold: the smallest "
                     f"difference of the means that Welch's t-test calls significant at {SIGNIFICANCE:.0%}; "
                     f"{NOISE_UNKNOWN} with fewer than 2 seeds on a side; {BELOW_RESOLUTION}: fewer than "
                     f"{RESOLUTION_EXAMPLES} val examples.")


def no_warnings_text() -> str:
    return ("No warnings: every run differs from the reference in one factor at most, with the same seeds, data, "
            "backbone and code.")


def markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + " --- |" * len(header), *map(line, rows)]


def csv_report(comparison: Comparison) -> str:
    """Every run, repeats included (repeat_of names the run they repeat), with its sample's and group's numbers."""
    group_of = {id(row): group for group in comparison.groups for row in group.rows}
    sample_of = {id(row): sample for sample in comparison.samples for row in sample.rows}
    reference = comparison.samples[0]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in comparison.rows:
        group, sample = group_of[id(row)], sample_of[id(row)]
        difference, examples = val_difference(sample, reference)
        writer.writerow([
            row.label, row.run_dir, None if row is sample.first else sample.first.label, row.status,
            row.best_val_score, row.test_score, row.best_epoch, row.wall_time_s, row.mean_epoch_time_s,
            row.peak_rss_mb, row.stability.value, row.stability.flag, row.seed,
            differences_cell(row, is_reference=sample is reference), difference, examples, group.name,
            format_seeds(group.seeds), group.best_val.mean, group.best_val.std, group.test.mean, group.test.std,
            group.difference, group.threshold, group.vs_reference,
        ])  # None is written as an empty cell
    return buffer.getvalue()


# ---- the console -----------------------------------------------------------------------------------------------


def print_comparison(comparison: Comparison) -> None:
    # rich assumes 80 columns when the output is not a terminal (a file, CI): too narrow for the table
    console = Console(width=None if sys.stdout.isatty() else PIPED_OUTPUT_WIDTH)
    console.print(Text(reference_text(comparison).replace("**", "").replace("`", "")))
    # The differences are the longest cells: listed under the table, they leave it the console's width.
    cells = run_cells(comparison.samples)
    console.print(rich_table("runs (the first is the reference)", RUN_COLUMNS[:-1], [row[:-1] for row in cells]))
    console.print(Text(f"{RUN_COLUMNS[-1]}:", style="bold"))
    for row in cells:
        console.print(Text(f"  {row[0]}: {row[-1]}"))
    if has_seed_groups(comparison.groups):
        console.print(rich_table("seed groups (over distinct seeds)", GROUP_COLUMNS, group_cells(comparison.groups)))
    console.print(Text(f"resolution: {'; '.join(comparison.resolution)}"))
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
