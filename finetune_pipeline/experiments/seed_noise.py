"""Repeats, seed groups and the noise verdict: is a difference between two configs more than chance?

Runs that agree in config, seed, data, backbone, code and device are repeats: one sample (Sample). Samples whose
configs differ only in the seed form a seed group, whose spread over distinct seeds is the seed noise. A group's
difference from the reference group is "within seed noise" unless Welch's t-test rejects it at SIGNIFICANCE, and
"below resolution" when it is worth fewer than RESOLUTION_EXAMPLES val examples, whatever the seeds say.
"""

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from scipy import stats

from finetune_pipeline.core.resolution import below_resolution
from finetune_pipeline.experiments.run_rows import RunRow, describe_changes

REFERENCE = "reference"
WITHIN_NOISE = "within seed noise"
BEYOND_NOISE = "beyond seed noise"
NOISE_UNKNOWN = "noise unknown"
BELOW_RESOLUTION = "below resolution"
SIGNIFICANCE = 0.05  # two-sided level of the Welch test behind "beyond seed noise"


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
                                threshold, verdict(difference, threshold, val_size, samples[0].first.metric)))
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


def verdict(difference: float | None, threshold: float | None, val_size: int | None, metric: str) -> str:
    """Below the val set's resolution first (seeds cannot make one example meaningful), then Welch's test."""
    if difference is None:
        return NOISE_UNKNOWN
    if val_size is not None and below_resolution(difference, val_size, metric):
        return BELOW_RESOLUTION
    if threshold is None:
        return NOISE_UNKNOWN
    return WITHIN_NOISE if abs(difference) < threshold else BEYOND_NOISE


def has_seed_groups(groups: list[SeedGroup]) -> bool:
    return any(len(group.seeds) >= 2 for group in groups)


def run_labels(group: SeedGroup) -> str:
    return ", ".join(sample.label for sample in group.samples)
