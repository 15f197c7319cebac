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

    run_selection.py  which runs: folders, sweeps, globs, --last N, --ref
    run_rows.py       one run: its row, its factors and provenance (its files: runs/run_record.py)
    seed_noise.py     repeats, seed groups, Welch's test, the verdicts
    fairness.py       the warnings and the notes (with the commands that measure what is missing)
    compare.py        this entry point, compare_runs, and what it writes and prints
"""

import csv
import dataclasses
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from finetune_pipeline.core.config import CONTINUOUS_METRICS, higher_is_better
from finetune_pipeline.core.resolution import RESOLUTION_EXAMPLES, describe_resolution, in_examples
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.experiments.fairness import find_notes, find_warnings
from finetune_pipeline.experiments.run_rows import (
    MISSING,
    RunRow,
    describe_changes,
    format_number,
    format_seeds,
    summarize,
)
from finetune_pipeline.experiments.seed_noise import (
    BELOW_RESOLUTION,
    NOISE_UNKNOWN,
    REFERENCE,
    SIGNIFICANCE,
    Sample,
    SeedGroup,
    Spread,
    collapse_repeats,
    has_seed_groups,
    seed_groups,
)
from finetune_pipeline.experiments.stability import Stability
from finetune_pipeline.runs.artifacts import METRICS_FILE
from finetune_pipeline.runs.plots import RunCurves, plot_overlay
from finetune_pipeline.runs.run_record import read_run_record
from finetune_pipeline.runtime.files import write_atomically

MARKDOWN_FILE = "compare.md"
CSV_FILE = "compare.csv"
PLOT_FILE = "compare.png"
PIPED_OUTPUT_WIDTH = 160
# Short headers, so that the table fits an 80-column terminal; compare.md explains them under the table.
RUN_COLUMNS = ("run", "status", "best val", "Δ val", "test", "best epoch", "time s", "s/epoch", "RSS MiB",
               "loss stability", "seed", "differs from reference in")
NUMBER_COLUMNS = {"best val", "Δ val", "test", "best epoch", "time s", "s/epoch", "RSS MiB", "seed"}
COLUMN_LEGEND = ("best val: best_val_score; Δ val: best val minus the reference's, and how many val examples that "
                 "is; test: test_score (the best epoch's checkpoint); time s: the whole run; s/epoch: mean epoch "
                 "time; RSS MiB: peak process memory; loss stability: lower is steadier, defined in "
                 "`finetune_pipeline/experiments/stability.py`; ×N: N repeats of one run (same config, seed, data, backbone, "
                 "code and device), counted once.")
GROUP_COLUMNS = ("seed group", "seeds", "best val mean ± std", "test mean ± std", "difference", "noise threshold",
                 "vs reference")
CSV_COLUMNS = ("run", "run_dir", "repeat_of", "status", "best_val_score", "test_score", "best_epoch", "wall_time_s",
               "mean_epoch_time_s", "peak_rss_mb", "loss_stability", "loss_stability_flag", "seed",
               "differs_from_reference", "delta_val", "delta_val_examples", "seed_group", "group_seeds",
               "group_best_val_mean", "group_best_val_std", "group_test_mean", "group_test_std",
               "group_difference", "group_noise_threshold", "group_vs_reference")
SEED_GROUP_LEGEND = (f"Mean ± sample std over distinct seeds (repeats count once). noise threshold: the smallest "
                     f"difference of the means that Welch's t-test calls significant at {SIGNIFICANCE:.0%}; "
                     f"{NOISE_UNKNOWN} with fewer than 2 seeds on a side; {BELOW_RESOLUTION}: fewer than "
                     f"{RESOLUTION_EXAMPLES} val examples.")


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


def compare_runs(run_dirs: list[Path], output_dir: Path, reference_given: bool = False) -> Comparison:
    """Load the runs (the first is the reference), check the comparison's fairness, and write compare.md,
    compare.csv and compare.png."""
    if not run_dirs:
        raise UserInputError("nothing to compare: no run folders given")
    records = [read_run_record(Path(run_dir)) for run_dir in run_dirs]
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


def resolution_lines(reference: RunRow) -> list[str]:
    metric = reference.metric
    direction = f"scores are {metric}: {'higher' if higher_is_better(metric) else 'lower'} is better"
    lines = [describe_resolution(split, reference.split_sizes[split], metric)
             for split in ("val", "test") if split in reference.split_sizes]
    if not lines:
        return [f"resolution unknown: the reference's {METRICS_FILE} has no split_sizes", direction]
    if metric in CONTINUOUS_METRICS:
        return [*lines, direction]
    return [*lines, f"a difference of fewer than {RESOLUTION_EXAMPLES} val examples is {BELOW_RESOLUTION}", direction]


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def run_curves(sample: Sample) -> RunCurves:
    """The run's curves as read with its record (a repeat's are the same), labelled as the tables label it."""
    return dataclasses.replace(sample.first.curves, label=sample.label)


def reference_text(comparison: Comparison) -> str:
    reference = comparison.samples[0]
    how = "given with --ref" if comparison.reference_given else "the first run; choose another with --ref RUN_DIR"
    return f"Reference: **{reference.label}** (`{reference.first.run_dir}`), {how}. The others are compared with it."


def no_warnings_text() -> str:
    return ("No warnings: every run differs from the reference in one factor at most, with the same seeds, data, "
            "backbone and code.")


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
    difference = value - reference_value
    return difference, None if val_size is None else in_examples(difference, val_size, reference.first.metric)


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


def format_spread(spread: Spread) -> str:
    if spread.std is None:
        return format_number(spread.mean, 4)
    return f"{spread.mean:.4f} ± {spread.std:.4f}"
