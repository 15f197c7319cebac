"""What makes a comparison unfair (warnings) and what the student should know or do next (notes).

Warnings: a run differs from the reference in more than one factor, ran other seeds, other data, another backbone,
other code or on another device or precision, or did not complete. Notes: repeats, the noise verdicts, and for
configs without a measured noise the command that measures it on these very runs.
"""

import shlex
from typing import Any, Callable

from finetune_pipeline.core.config import changed_values, higher_is_better
from finetune_pipeline.core.resolution import RESOLUTION_EXAMPLES, in_examples
from finetune_pipeline.experiments.run_rows import (
    RunRow,
    backbone_identity,
    code_identity,
    data_identities,
    describe_changes,
    describe_problems,
    format_number,
    format_seeds,
    hardware_identity,
    leakage_identity,
)
from finetune_pipeline.experiments.seed_noise import (
    BELOW_RESOLUTION,
    BEYOND_NOISE,
    SIGNIFICANCE,
    WITHIN_NOISE,
    Sample,
    SeedGroup,
    run_labels,
)
from finetune_pipeline.runs.artifacts import METRICS_FILE
from finetune_pipeline.runs.baselines import describe_baselines
from finetune_pipeline.runs.run_record import RunRecord

COMPLETED = "completed"
SEEDS_WANTED = 3  # the seeds the advice asks for per config: the fewest that give a spread and a t-test


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
          for record, row in zip(records, rows, strict=True) for problem in describe_problems(record)),
        *(f"run {sample.label} is {sample.first.status}, not {COMPLETED}: its scores are partial or missing"
          for sample in samples if sample.first.status != COMPLETED),
        *(f"run {row.label}: {flag}" for record, row in zip(records, rows, strict=True)
          for flag in record.measured.score_flags or []),
        *factor_warnings(groups),
        *seed_warnings(groups),
        *provenance_warnings(labels, data_identities(sample_records), "data", "data_files",
                             "scores on different data are not comparable"),
        *provenance(leakage_identity, "leakage", "leakage",
                    "a split holding train texts scores memory as well as skill; compare runs with the same overlap "
                    "(data.drop_leaked, the same files)"),
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
    reference = {id(row): record for record, row in zip(records, rows, strict=True)}[id(samples[0].first)] \
        if samples else None
    if reference is not None and (baselines := describe_baselines(reference.measured.baselines,
                                                                   reference.measured.metric)):
        notes.append(f"baselines of the reference {samples[0].label} ({reference.measured.metric_name} without "
                     f"reading the text): {baselines}; a score must beat these to mean the model learned anything")
    notes += [verdict_note(group, groups[0], samples[0].first.split_sizes.get("val")) for group in groups[1:]
              if group.vs_reference in (BELOW_RESOLUTION, WITHIN_NOISE, BEYOND_NOISE)]
    notes += seed_advice(groups)
    dirty = [row.label for record, row in zip(records, rows, strict=True)
             if (record.measured.code_version or {}).get("git_dirty")]
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
    metric = reference.samples[0].first.metric
    worth = None if val_size is None else in_examples(group.difference, val_size, metric)
    examples = "" if worth is None else f", {abs(worth):.1f} of {val_size} val examples"
    direction = "" if higher_is_better(metric) else f" ({'better' if group.difference < 0 else 'worse'}: lower " \
                                                   f"{metric} is better)"
    head = f"{group.name} vs the reference: mean best val differs by {group.difference:+.4f}{direction}{examples}"
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
