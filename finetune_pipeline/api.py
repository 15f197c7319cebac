"""The Python API: what the `finetune` commands do, as functions for a notebook or a script.

    import finetune_pipeline as ft

    run_a = ft.train()                                        # the defaults: experiment A on the default dataset
    run_b = ft.train(run_a.config, {"model.dropout": 0.3})    # A's own config with one change
    result = ft.compare([run_a, run_b])                       # result.table (compare.csv), .warnings, .notes
    run_b.predict(["A warm, funny film."])                    # a DataFrame: text, label, prob_<class> ...

Data is a path (anything data.train_file takes), a pandas DataFrame or a datasets.Dataset; in_memory.py
stores a table as a data file, so that it gets a file's checks and a content hash. Every input is checked as
the commands check it, and every problem raises UserInputError with the command's message (OutOfMemory and
TrainingDiverged are subclasses of it); nothing here exits the process.
"""

from __future__ import annotations  # Data and RunLike name pandas and datasets types without importing them

import base64
import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from finetune_pipeline.core.config import Config, DataConfig, config_from_dict, configured, read_config_file
from finetune_pipeline.core.default_dataset import prepare_default_dataset
from finetune_pipeline.core.readers import FileSettings
from finetune_pipeline.errors import OutOfMemory, UserInputError
from finetune_pipeline.experiments import run_selection
from finetune_pipeline.experiments.compare import PLOT_FILE, compare_runs, no_warnings_text
from finetune_pipeline.experiments.sweep import plan_sweep, run_sweep
from finetune_pipeline.in_memory import store_table, stored_origin, table_kind
from finetune_pipeline.runs import report
from finetune_pipeline.runs.artifacts import CONFIG_FILE, CURVES_FILE
from finetune_pipeline.runs.mistakes import kept_mistakes
from finetune_pipeline.runs.preparation import SPLIT_NAMES
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runs.run_record import read_run_files
from finetune_pipeline.runtime.run_log import configure_console_logging
from finetune_pipeline.serving.export import export_run
from finetune_pipeline.serving.inference import evaluate_file, predict_texts

if TYPE_CHECKING:  # for type checkers only: pandas and datasets are optional, and imported when used
    import datasets
    import pandas

Data: TypeAlias = "str | PathLike[str] | pandas.DataFrame | datasets.Dataset"
RunLike: TypeAlias = "Run | str | PathLike[str]"  # a Run, or a run folder

# ft.prepare_data(): the default dataset (Rotten Tomatoes), as `finetune prepare-data` writes it; idempotent.
prepare_data = prepare_default_dataset

PROBABILITY_PREFIX = "prob_"  # predict's columns, as in `finetune predict --output x.csv`
# compare.csv's columns that hold text, read as text even where a value looks like a number (a seed list "42")
COMPARE_TEXT_COLUMNS = ("run", "run_dir", "repeat_of", "status", "loss_stability_flag", "differs_from_reference",
                        "seed_group", "group_seeds", "group_vs_reference")
# what a notebook shows of the comparison; CompareResult.table has every column
COMPARE_SHOWN_COLUMNS = ("run", "status", "best_val_score", "delta_val", "delta_val_examples", "test_score", "seed",
                         "differs_from_reference", "group_vs_reference")
EVALUATE_TABLE_SETTINGS = FileSettings(file="data=", columns={"text": "text_column= of Run.evaluate",
                                                              "label": "label_column= of Run.evaluate"})


# ---- a run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Run:
    """A run folder as read when the Run was made: its metrics.json and its effective config.

    A notebook shows it as the headline numbers and curves.png; predict, evaluate and export use its model.
    """

    dir: Path
    metrics: dict[str, Any]  # metrics.json's keys and values, as the guide describes them
    config: Config

    @functools.cached_property  # works on a frozen dataclass: it writes the instance's __dict__ directly
    def measured(self) -> RunMetrics:
        """metrics as the typed record the package itself reads."""
        return RunMetrics.model_validate(self.metrics)

    def predict(self, texts: str | Iterable[str], batch_size: int = 32,
                pairs: str | Iterable[str] | None = None) -> pandas.DataFrame:
        """One row per text, in order: text (text_pair, for a model trained on pairs: give pairs=), label and
        prob_<label> for every label, in the run's label order. label is the most probable class (single-label), the
        list of labels at or above their thresholds (multi-label), or the predicted number (regression, which has
        no prob_ columns)."""
        pandas = import_pandas()
        texts, pairs = checked_strings(texts, "texts"), None if pairs is None else checked_strings(pairs, "pairs")
        return pandas.DataFrame([
            {"text": prediction.text, **({"text_pair": prediction.text_pair} if prediction.text_pair is not None else {}),
             "label": prediction.label,
             **{PROBABILITY_PREFIX + label: probability for label, probability in (prediction.probabilities or {}).items()}}
            for prediction in predict_texts(self.dir, texts, batch_size, pairs=pairs)
        ])

    def evaluate(self, data: Data, text_column: str | None = None, label_column: str | None = None,
                 name: str | None = None, delimiter: str | None = None, encoding: str | None = None) -> dict[str, Any]:
        """The best checkpoint's metrics on labelled data, as `finetune evaluate` computes them; also written to
        RUN_DIR/evaluations/<name>.json. Columns, delimiter and encoding default to those the run read its data
        with (data.text_column, data.label_column, data.delimiter, data.encoding)."""
        kind = table_kind(data)
        if kind is None:
            metrics, _ = evaluate_file(self.dir, Path(data_path(data, "data=")), text_column, label_column, name,
                                       delimiter=delimiter, encoding=encoding)
            return metrics
        pair = self.config.data.text_pair_column
        columns = {"text": text_column or self.config.data.text_column,
                   "label": label_column or self.config.data.label_column, **({"text_pair": pair} if pair else {})}
        path = store_table(data, columns, EVALUATE_TABLE_SETTINGS, f"the {kind} given as data=",
                           self.config.output.cache_dir)
        try:
            metrics, _ = evaluate_file(self.dir, path, columns["text"], columns["label"],
                                       name or f"{kind.lower()}-{path.stem[:12]}")
        except UserInputError as error:
            raise with_table_origin(error, str(path), stored_origin(kind, "data= to Run.evaluate"))
        return metrics

    def errors(self, split: str = "test", n: int = 20) -> pandas.DataFrame:
        """The n wrong answers the model was surest of on split ("val" or "test"), most confident first, as
        `finetune errors` prints them: text (text_pair), line, then true, predicted and probability (single-label),
        label, error and probability (multi-label), or true, predicted and error (regression)."""
        return import_pandas().DataFrame(kept_mistakes(self.measured.mistakes, split, n, str(self.dir)))

    def export(self, format: str = "hf", checkpoint: str = "best", output: str | PathLike[str] | None = None,
               ) -> dict[str, Path]:
        """`finetune export`: format "hf" (a transformers folder), "onnx", "onnx-int8" (quantized for CPU serving)
        or "all"; checkpoint "best" or "final"; output: where the hf/, onnx/ and onnx-int8/ folders go (default
        RUN_DIR/export). Returns {format: folder}."""
        return export_run(self.dir, format, checkpoint, None if output is None else Path(output))

    def __repr__(self) -> str:
        metrics = self.measured
        scores = (f", best val {metrics.metric_name} {metrics.best_val_score:.4f} (epoch {metrics.best_epoch}), "
                  f"test {metrics.test_score:.4f}" if metrics.test_score is not None else "")
        return f"Run({str(self.dir)!r}, {metrics.status}{scores})"

    def _repr_html_(self) -> str:
        """What a notebook shows: the headline numbers, the precision really used, and curves.png."""
        return "\n".join([
            f"<p><b>Run {escape(str(self.dir))}</b>: {escape(self.measured.status)}</p>",
            report.warnings_box(self.measured),
            report.headline_section(self.measured),
            report.precision_section(self.measured),
            png_tag(self.dir / CURVES_FILE, "train loss, val score and learning rate"),
        ])


def load_run(folder: str | PathLike[str]) -> Run:
    """A finished (or failed, or interrupted) run's folder, as a Run."""
    folder = Path(folder)
    metrics, plain_config = read_run_files(folder, "ft.load_run")
    return Run(folder, metrics.as_json(), config_from_dict(plain_config, source=str(folder / CONFIG_FILE)))


# ---- train ---------------------------------------------------------------------------------------------------


def train(
    config: str | PathLike[str] | dict[str, Any] | Config | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    train: Data | None = None,
    val: Data | None = None,
    test: Data | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
) -> Run:
    """Train once, as `finetune train` does, and return the Run.

    config: a JSON config file, a dict of the same shape, a Config (such as another run's `run.config`, the
        `--from-run` of the command line), or None for the schema's defaults (the values train_config.json lists).
    overrides: dotted keys, as `--set` takes them: {"model.dropout": 0.3}.
    train, val, test: each a path, a DataFrame or a Dataset; one not given is the config's. As with a config,
        when the train data is not the default dataset's, a val or test split that is not given is carved out of it.
    text_column, label_column: the data's columns (data.text_column, data.label_column).
    """
    # warnings only (the progress bars show the rest); one console handler, replaced on each call
    configure_console_logging(logging.WARNING)
    overrides = checked_overrides(overrides) | {
        f"data.{role}_column": name for role, name in (("text", text_column), ("label", label_column)) if name}
    data = {split: given for split, given in zip(SPLIT_NAMES, (train, val, test), strict=True) if given is not None}
    for split in data:
        if f"data.{split}_file" in overrides:
            raise UserInputError(f"give the {split} data once: {split}= or overrides data.{split}_file, not both")
    raw, source, config_file = config_source(config)
    effective = build_config(raw, overrides, source, data)
    try:
        run_dir = run_training(effective, origin={"config_file": config_file, "overrides": overrides})
    except OutOfMemory as error:
        raise with_rerun_call(error, overrides) from None
    except UserInputError as error:
        for split in [split for split, given in data.items() if table_kind(given)]:
            with_table_origin(error, getattr(effective.data, f"{split}_file"), effective.data.file_origin(split))
        raise
    return load_run(run_dir)


def checked_strings(texts: str | Iterable[str], name: str) -> list[str]:
    if not isinstance(texts, str) and (not isinstance(texts, Iterable) or isinstance(texts, (bytes, dict))):
        raise UserInputError(f"{name}: expected a string or a list of strings; got a {type(texts).__name__} "
                             f"({texts!r:.60})")
    texts = [texts] if isinstance(texts, str) else list(texts)
    for position, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise UserInputError(f"{name}: item {position} of {len(texts)} is a {type(text).__name__}, not a string")
    return texts


def checked_overrides(overrides: Any) -> dict[str, Any]:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict) or not all(isinstance(key, str) for key in overrides):
        raise UserInputError(f"overrides: expected a dict of dotted keys, e.g. {{'model.dropout': 0.3}}; "
                             f"got {overrides!r}")
    return dict(overrides)


def config_source(config: Any) -> tuple[dict[str, Any], str, str | None]:
    """(the config's raw dict, what to call it in messages, its file or None)."""
    if config is None:
        return {}, "the default config", None
    if isinstance(config, Config):
        return config.to_plain(), "the Config given to ft.train", None
    if isinstance(config, dict):
        return config, "the config dict given to ft.train", None
    if isinstance(config, (str, PathLike)):
        return read_config_file(config), str(config), str(config)
    raise UserInputError(f"config: expected a JSON config file's path, a dict, a Config (such as run.config) or "
                         f"None for the defaults; got a {type(config).__name__}")


def build_config(raw: dict[str, Any], overrides: dict[str, Any], source: str, data: dict[str, Data]) -> Config:
    """The effective config, with data.<split>_file set to each given split's path (a table's stored file), and
    where each split's file comes from, for messages (config.configured records the origins of the rest)."""
    config = configured(raw, overrides, source, "overrides")  # a bad config fails before any table is stored
    files, origins = {}, {}
    for split, given in data.items():
        kind = table_kind(given)
        if kind is None:
            files[split], origins[split] = data_path(given, f"{split}="), f"given as {split}= to ft.train"
        else:
            files[split] = str(store_table(given, split_columns(config.data, split), table_settings(split),
                                           f"the {kind} given as {split}=", config.output.cache_dir))
            origins[split] = stored_origin(kind, f"{split}= to ft.train")
    if not files:
        return config
    # validated again: with train data of its own, val and test not given are carved out of it
    config = configured(raw, overrides | {f"data.{split}_file": path for split, path in files.items()}, source,
                        "overrides")
    config.data._file_origins.update(origins)
    return config


def split_columns(data: DataConfig, split: str) -> dict[str, str]:
    """role -> column name for one split, as data.read_split chooses them."""
    columns = getattr(data.columns, split)
    pair = columns.text_pair_column or data.text_pair_column
    return {"text": columns.text_column or data.text_column, "label": columns.label_column or data.label_column,
            **({"text_pair": pair} if pair else {})}


def table_settings(split: str) -> FileSettings:
    columns = {role: f"{role}_column= of ft.train (or data.{role}_column)" for role in ("text", "label")}
    columns["text_pair"] = "data.text_pair_column"
    return FileSettings(file=f"{split}=", columns=columns, role=split)


def data_path(data: Any, argument: str) -> str:
    if isinstance(data, (str, PathLike)):
        return str(data)
    # a DatasetDict is a dict of splits
    one_split = f" (it holds the splits {', '.join(data)}: give one, e.g. {argument}data[{next(iter(data))!r}])" \
        if isinstance(data, dict) and data else ""
    raise UserInputError(f"{argument}: expected a data file's path, a pandas DataFrame or a datasets.Dataset; got a "
                         f"{type(data).__name__}{one_split}")


def with_table_origin(error: UserInputError, path: str, origin: str) -> UserInputError:
    """A message about a table's stored file speaks of the table: "PATH, line 4" becomes "the DataFrame given as
    train= to ft.train, row .iloc[3]" (the file's line N is the table's row N - 1); the note that explains the file
    (data.read_split adds it) goes. In place: the error keeps its type and its run_dir."""
    table = origin.split(", stored as")[0]  # stored_origin's words: "the DataFrame given as train= to ft.train"
    row = ".iloc[{}]" if " DataFrame " in f" {table} " else "[{}]"
    message = re.sub(rf"{re.escape(path)}, line (\d+)", lambda found: f"{table}, row {row.format(int(found[1]) - 1)}",
                     str(error))
    message = "\n".join(line for line in message.splitlines() if origin not in line)
    error.args = (message if path not in message else f"{message}\n  ({path}: {origin})",)
    return error


def with_rerun_call(error: OutOfMemory, overrides: dict[str, Any]) -> OutOfMemory:
    """The API's counterpart of the command's rerun line: the call that reruns this run with the first fix."""
    if error.run_dir is not None:  # its config.json is the run's whole effective config
        call = f"ft.train({str(Path(error.run_dir) / CONFIG_FILE)!r}, {error.fix!r})"
    else:
        fixed = {**overrides, **error.fix}
        call = f"the same ft.train call with overrides={fixed!r}"
    error.args = (f"{error}\nRerun it with the first of them: {call}",)
    return error


# ---- sweep and compare ---------------------------------------------------------------------------------------


class CompareResult(NamedTuple):
    """What `finetune compare` prints: the table (compare.csv, one row per run, the reference first), the
    WARNINGs (why the comparison is not fair), the notes (repeats, seed-noise verdicts, advice) and what one
    example is worth on each split; dir holds compare.md, compare.csv and compare.png."""

    table: pandas.DataFrame
    warnings: list[str]
    notes: list[str]
    resolution: list[str]
    dir: Path

    def _repr_html_(self) -> str:
        warnings = "".join(f'<li style="color: #b00"><b>WARNING:</b> {escape(text)}</li>' for text in self.warnings)
        notes = "".join(f"<li>{escape(text)}</li>" for text in self.notes)
        columns = [column for column in COMPARE_SHOWN_COLUMNS if column in self.table.columns]
        return "\n".join([
            f"<ul>{warnings}</ul>" if warnings else f"<p>{escape(no_warnings_text())}</p>",
            self.table[columns].to_html(index=False, na_rep=""),
            f"<ul>{notes}</ul>" if notes else "",
            f"<p>Resolution: {escape('; '.join(self.resolution))}</p>",
            png_tag(self.dir / PLOT_FILE, "train loss and val score of every run"),
        ])


class SweepResult(NamedTuple):
    """A sweep's runs (failed members with a run folder included), its folder (sweep.json, compare.md, ...), one
    line per member that did not complete, and the comparison of the runs (None if no member got a run folder)."""

    runs: list[Run]
    dir: Path
    failures: list[str]
    comparison: CompareResult | None


def compare(runs: RunLike | Iterable[RunLike], ref: RunLike | None = None,
                 output_dir: str | PathLike[str] | None = None) -> CompareResult:
    """`finetune compare`: runs are Runs, run folders, sweep folders or quoted glob patterns; the reference is ref
    (placed first), else the first run. compare.md/.csv/.png go to output_dir, by default the sweep folder when
    one sweep folder is given, else comparisons/<time>/ next to the reference run's folder."""
    targets = [folder_of(run) for run in as_list(runs)]
    if not targets:
        raise UserInputError("ft.compare: give the runs to compare (Runs, run folders or a sweep folder)")
    reference = None if ref is None else folder_of(ref)
    run_dirs = run_selection.resolve_run_dirs(targets, None, Path("."), reference)
    # comparisons/<time>/ beside the reference run's folder: the API has no artifacts root of its own
    output_dir = run_selection.comparison_dir(targets, run_dirs[0].parent) if output_dir is None else Path(output_dir)
    comparison = compare_runs(run_dirs, output_dir, reference_given=ref is not None)
    table = import_pandas().read_csv(comparison.csv_path, dtype=dict.fromkeys(COMPARE_TEXT_COLUMNS, str))
    return CompareResult(table, comparison.warnings, comparison.notes, comparison.resolution, Path(output_dir))


def sweep(preset_or_file: str | PathLike[str] | None = None, from_runs: RunLike | Iterable[RunLike] | None = None,
          seeds: list[int] | None = None, overrides: dict[str, Any] | None = None,
          members: list[str] | None = None) -> SweepResult:
    """`finetune sweep`: a preset (A to F) or a sweep file, or from_runs (their own configs again, with each of
    seeds); members: only these of the preset's members, by name (as sweep.json names them); then the comparison
    of its runs, written into the sweep folder as the command does."""
    configure_console_logging(logging.WARNING)
    from_runs = [] if from_runs is None else as_list(from_runs)
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)):
        raise UserInputError(f"seeds: expected a list of integers, e.g. [42, 43, 44]; got {seeds!r}")
    plan = plan_sweep(None if preset_or_file is None else str(preset_or_file),
                      [Path(folder_of(run)) for run in from_runs], seeds, checked_overrides(overrides),
                      ("ft.sweep('A')", "ft.sweep(from_runs=[run], seeds=[43, 44])"),
                      None if members is None else checked_strings(members, "members"))
    sweep_dir = run_sweep(plan)
    runs = [load_run(member.run_dir) for member in plan.members if member.run_dir]
    failures = [f"member {member.name} (seed {member.seed}) failed: {member.error}"
                for member in plan.members if member.status != "completed"]
    return SweepResult(runs, sweep_dir, failures, compare(runs, output_dir=sweep_dir) if runs else None)


# ---- shared --------------------------------------------------------------------------------------------------


def folder_of(run: RunLike) -> str:
    return str(run.dir if isinstance(run, Run) else run)


def as_list(runs: RunLike | Iterable[RunLike]) -> list[RunLike]:
    """One run or folder, or several."""
    return [runs] if isinstance(runs, (Run, str, PathLike)) else list(runs)


def png_tag(path: Path, alt: str) -> str:
    """The image embedded in the page (base64), so that a saved notebook still shows it; nothing if it is missing."""
    if not path.is_file():
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def import_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UserInputError('the Python API returns tables as pandas DataFrames: pip install '
                             '"finetune-pipeline[notebook]"') from None
    return pandas
