"""report.html: one page that says what a run did, from whatever its folder holds.

The page is a single self-contained file: the CSS is inline and the curves are embedded as a
`data:` URI, so it opens offline, can be mailed as is, and never contacts a server. It is written at
the end of every run, failed and interrupted ones included, so every section copes with missing
files and fields and says what is missing instead of failing.
"""

import base64
import json
from html import escape
from pathlib import Path
from typing import Any, Callable

from finetune_pipeline.core.calibration import describe_temperature
from finetune_pipeline.core.config import Config, config_settings
from finetune_pipeline.core.resolution import RESOLUTION_EXAMPLES, example_worth
from finetune_pipeline.runs.artifacts import CONFIG_FILE, CURVES_FILE, FREEZE_PROOF_FILE, METRICS_FILE, REPORT_FILE
from finetune_pipeline.runs.baselines import describe_split_baselines
from finetune_pipeline.runs.plots import plot_run_curves, regression_png, reliability_png
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runs.run_record import FileProblem, RunRecord, read_run_record
from finetune_pipeline.runtime.files import write_atomically

STYLE = """
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
tr.changed td { background: #fff3c4; font-weight: bold; }
td.hit { background: #d9f2d9; } td.miss { background: #f8d7d7; }
.status { display: inline-block; padding: 0.2em 0.6em; border-radius: 0.3em; color: white; background: #777; }
.status.completed { background: #2e7d32; } .status.failed { background: #c62828; }
.status.interrupted, .status.running { background: #ef6c00; }
.missing { color: #8a6d00; font-style: italic; }
.bad { color: #c62828; font-weight: bold; } .good { color: #2e7d32; font-weight: bold; }
pre { background: #f6f6f6; padding: 0.8em; white-space: pre-wrap; }
img { max-width: 100%; }
"""

MISTAKES_SHOWN = 10
WARNINGS_STYLE = "border: 2px solid #c62828; background: #fdecea; color: #222; padding: 0.4em 1em; margin: 1em 0"

STATUS_EXPLANATIONS = {
    "completed": "the run finished: trained, then tested once with the best checkpoint",
    "failed": "the run stopped with an error; the files below are those written before it",
    "interrupted": "the run was stopped by Ctrl-C; the files below are those written before it",
    "running": "metrics.json still says running: the process was killed before it could record its end",
}


def write_run_report(run_dir: Path) -> list[Path]:
    """Write curves.png and report.html into the run folder and return their paths."""
    run = read_run_record(run_dir)
    curves_path = run_dir / CURVES_FILE
    plot_run_curves(run.curves, curves_path)
    report_path = run_dir / REPORT_FILE
    page = render_page(run, curves_path.read_bytes())
    write_atomically(report_path, lambda file: file.write(page.encode("utf-8")))
    return [curves_path, report_path]


def describe_problem(problem: FileProblem) -> str:
    return f"{problem.file}: " + ("not written" if problem.missing else f"could not be read ({problem.error})")


# ---- the page ------------------------------------------------------------------------------------


def render_page(run: RunRecord, curves_png: bytes) -> str:
    metrics = run.measured
    sections: list[tuple[str, Callable[[], str]]] = [
        ("Headline", lambda: headline_section(run.metrics)),
        ("Mixed precision", lambda: precision_section(metrics)),
        ("Curves", lambda: curves_section(curves_png)),
        *task_sections(metrics),
        ("Most confident mistakes", lambda: mistakes_section(metrics)),
        ("Calibration", lambda: calibration_section(metrics)),
        ("Freeze proof", lambda: freeze_proof_section(run.freeze_proof)),
        ("Split sizes and resolution", lambda: split_sizes_section(metrics)),
        ("Duplicates and leakage", lambda: leakage_section(metrics)),
        ("Config", lambda: config_section(run.config)),
    ]
    body = [status_section(run), *(section(title, build) for title, build in sections)]
    title = escape(f"Run {run.run_dir.name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def section(title: str, build: Callable[[], str]) -> str:
    try:
        content = build()
    except Exception as error:
        # A field of an unexpected shape (an older run, a hand edit) costs one section, not the report:
        # the report is written while a failed run is ending, and must never hide that run's own error.
        content = missing(f"could not be shown ({type(error).__name__}: {error})")
    return f"<h2>{escape(title)}</h2>\n{content}"


def status_section(run: RunRecord) -> str:
    status = run.measured.status
    parts = [
        f'<p>Status: <span class="status {escape(status)}">{escape(status)}</span> '
        f"{escape(STATUS_EXPLANATIONS.get(status, 'no metrics.json status was recorded'))}</p>"
    ]
    if run.measured.error:
        parts.append(f"<pre>{escape(run.measured.error)}</pre>")
    parts.append(warnings_box(run.measured))
    if run.problems:
        items = "".join(f"<li>{escape(describe_problem(problem))}</li>" for problem in run.problems)
        parts.append(missing("Missing or unreadable in this run folder:") + f'\n<ul class="missing">{items}</ul>')
    return "\n".join(parts)


def warnings_box(metrics: RunMetrics) -> str:
    """What the run warned of that its scores depend on (the texts' language, leakage, the score flags), in a red
    box; '' without any. The notebook's run display shows it too (its own inline style: no page CSS there)."""
    warnings = [*([metrics.language_warning] if metrics.language_warning else []),
                *(metrics.leakage or {}).get("warnings", []), *(metrics.score_flags or [])]
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(warning)}</li>" for warning in warnings)
    return f'<div class="warnings" style="{WARNINGS_STYLE}"><strong>Warnings</strong>\n<ul>{items}</ul></div>'


def headline_section(metrics: RunMetrics | None) -> str:
    if metrics is None:
        return missing(f"no {METRICS_FILE}: nothing was measured")
    baselines = {split: describe_split_baselines(by_name, metrics.metric)
                 for split, by_name in (metrics.baselines or {}).items() if metrics.metric}
    return key_value_table([
        ("metric", metrics.metric),
        ("best_val_score", metrics.best_val_score),
        ("best_epoch", metrics.best_epoch),
        ("test_score", metrics.test_score),
        *((f"{split} baselines (without reading the text)", described) for split, described in baselines.items()),
        ("wall time", format_seconds(metrics.wall_time_s)),
        ("peak memory", format_memory(metrics.peak_memory_mb)),
        ("device", metrics.device),
    ])


def precision_section(metrics: RunMetrics) -> str:
    precision = metrics.mixed_precision
    if not precision:
        return missing(f"{METRICS_FILE} has no mixed_precision")
    return key_value_table([
        ("requested", precision.get("requested")),
        ("used", precision.get("used")),
        ("why they differ", precision.get("reason") or "they do not"),
    ])


def curves_section(curves_png: bytes) -> str:
    encoded = base64.b64encode(curves_png).decode("ascii")
    return (f'<img alt="train loss, val score and learning rate" src="data:image/png;base64,{encoded}">\n'
            f"<p>The same image is saved as {CURVES_FILE} next to this file.</p>")


def evaluation_source(metrics: RunMetrics) -> tuple[str, dict[str, Any]] | None:
    """The metrics to detail: the test split's, else the best epoch's val metrics, else None."""
    if metrics.test_metrics:
        return "test split (best checkpoint)", metrics.test_metrics
    if metrics.val_metrics:
        return "val split, best epoch (the run has no test metrics)", metrics.val_metrics
    return None


def task_sections(metrics: RunMetrics) -> list[tuple[str, Callable[[], str]]]:
    """What the task's metrics hold: per class and the confusion matrix (single-label), per label with its threshold
    (multi-label), the error measures and the target's scaling (regression)."""
    if metrics.task_type == "regression":
        return [("Scores", lambda: regression_section(metrics))]
    per_label = ("Per label", lambda: per_class_section(metrics, ["threshold"]))
    if metrics.task_type == "multi_label":
        return [per_label]
    return [("Per class", lambda: per_class_section(metrics, [])), ("Confusion matrix", lambda: confusion_section(metrics))]


def per_class_section(metrics: RunMetrics, extra_columns: list[str]) -> str:
    source = evaluation_source(metrics)
    if source is None or not source[1].get("per_class"):
        return missing(f"{METRICS_FILE} has neither test_metrics nor val_metrics: no epoch was evaluated")
    split, evaluated = source
    train_counts = (metrics.label_distribution or {}).get("train")  # older runs did not record these two
    weights = metrics.class_weights
    columns = ["precision", "recall", "f1", "support", *extra_columns]
    rows = [
        [cell(name), *(cell(scores.get(key), "number") for key in columns),
         *([cell(train_counts.get(name), "number")] if train_counts else []),
         *([cell(weights.get(name), "number")] if weights else [])]
        for name, scores in evaluated["per_class"].items()
    ]
    header = ["label", *columns, *(["train examples"] if train_counts else []),
              *(["weight in the loss (training.class_weights)"] if weights else [])]
    chosen = " Each label's threshold was chosen on the val split (the F1-best)." if extra_columns else ""
    return f"<p>From the {escape(split)}.{chosen}</p>\n" + table(header, rows)


def regression_section(metrics: RunMetrics) -> str:
    scores = [(split, values) for split, values in (("val (best epoch)", metrics.val_metrics),
                                                    ("test (best checkpoint)", metrics.test_metrics)) if values]
    if not scores:
        return missing(f"{METRICS_FILE} has neither test_metrics nor val_metrics: no epoch was evaluated")
    names = ["rmse", "mae", "pearson", "spearman"]
    scaling = metrics.task or {}
    note = (f"<p>RMSE and MAE are in the target's units (lower is better); Pearson and Spearman are correlations "
            f"(higher is better). The model predicts the target standardised with the train split's mean "
            f"{show(scaling.get('target_mean'))} and standard deviation {show(scaling.get('target_std'))}, and "
            "every prediction is turned back into the target's units.</p>")
    split, values = scores[-1]
    points = values.get("points")
    figure = "" if not points else (
        f'\n<img alt="predicted vs true and residuals, {escape(split)}" src="data:image/png;base64,'
        f'{base64.b64encode(regression_png(points["true"], points["predicted"])).decode("ascii")}">\n'
        f"<p>Predicted against true on the {escape(split)} ({len(points['true'])} evenly spaced examples): the "
        "closer to the diagonal the better; the residuals should centre on 0.</p>")
    return table(["split", *names], [[cell(split), *(cell(values.get(name), "number") for name in names)]
                                     for split, values in scores]) + "\n" + note + figure


def mistakes_section(metrics: RunMetrics) -> str:
    """The test split's wrong answers the model was surest of, and the most frequent confusions (val's too are in
    metrics.json and `finetune errors --split val`)."""
    record = (metrics.mistakes or {}).get("test")
    if record is None:
        return missing(f"{METRICS_FILE} has no mistakes (a run that did not complete, or one recorded before they "
                       "were kept)")
    shown = record["examples"][:MISTAKES_SHOWN]
    columns = [key for key in (shown[0] if shown else {}) if key != "line"]
    rows = [[cell(mistake[key], "number" if isinstance(mistake[key], float) else "") for key in columns]
            for mistake in shown]
    confusions = "; ".join(", ".join(f"{key} {value}" for key, value in confusion.items())
                           for confusion in record["confusions"])
    return (f"<p>{record['wrong']} wrong answers on test; the {len(shown)} the model was surest of (all "
            f"{len(record['examples'])} kept: <code>finetune errors RUN_DIR --n {len(record['examples'])}</code>). "
            "Read them for labels that are themselves wrong, sarcasm, negations, texts cut at max_length.</p>\n"
            + table(columns, rows) + (f"\n<p>Most frequent: {escape(confusions)}</p>" if confusions else ""))


def calibration_section(metrics: RunMetrics) -> str:
    """The temperature fitted on val, ECE and NLL before and after, and the reliability diagram on test."""
    calibration = metrics.calibration
    if calibration is None:
        return missing("not calibrated: a regression outputs a number, not a probability" if
                       metrics.task_type == "regression" else f"{METRICS_FILE} has no calibration (a run that "
                       "did not complete, or one recorded before calibration existed)")
    rows = [[cell(f"{split}, {when}"), cell(calibration[split][when]["ece"], "number"),
             cell(calibration[split][when]["nll"], "number")]
            for split in ("val", "test") for when in ("before", "after")]
    temperatures = describe_temperature(calibration["temperature"])
    test = calibration["test"]
    image = base64.b64encode(reliability_png(test["before"]["bins"], test["after"]["bins"])).decode("ascii")
    return (f"<p>Temperature fitted on val: {escape(temperatures)} (logits divided by it; above 1 the model was "
            "over-confident). Decisions do not change; predict, evaluate and the exports give the calibrated "
            "probabilities.</p>\n" + table(["split", "ECE", "NLL"], rows)
            + f'\n<img alt="reliability diagram, test" src="data:image/png;base64,{image}">')


def confusion_section(metrics: RunMetrics) -> str:
    source = evaluation_source(metrics)
    if source is None or not source[1].get("confusion_matrix"):
        return missing(f"{METRICS_FILE} has no confusion matrix yet")
    split, evaluated = source
    matrix = evaluated["confusion_matrix"]
    names = metrics.label_names or [str(index) for index in range(len(matrix))]
    rows = [
        [cell(true_name, tag="th"),
         *(cell(count, "number " + ("hit" if row == column else "miss" if count else ""))
           for column, count in enumerate(counts))]
        for row, (true_name, counts) in enumerate(zip(names, matrix, strict=True))
    ]
    return (f"<p>From the {escape(split)}. Rows: true label; columns: predicted label. "
            "The diagonal holds the correct predictions.</p>\n"
            + table(["true \\ predicted", *names], rows))


def freeze_proof_section(proof: dict[str, Any] | None) -> str:
    if proof is None:
        return missing(f"no {FREEZE_PROOF_FILE}: the run stopped before training finished")
    summary = proof.get("summary") or {}
    verdict_class = "good" if proof.get("consistent_with_config") else "bad"
    return (
        f'<p>Backbone: <span class="{verdict_class}">{escape(backbone_verdict(proof))}</span></p>\n'
        f"<p>Head: {escape(head_verdict(proof))}</p>\n"
        + key_value_table(list(summary.items())) + layers_table(proof.get("layers"))
    )


def layers_table(layers: list[dict[str, Any]] | None) -> str:
    """Per part of the backbone: trained by the config or not, and what changed; a row that disagrees is red."""
    if not layers:
        return ""
    rows = [[cell(row["part"]), cell("trained" if row["trained"] else "frozen"),
             cell(f"{row['tensors_changed']} of {row['tensors']}", "number"), cell(row["max_abs_change"], "number")]
            for row in layers]
    classes = ["" if row.get("as_configured", True) else "changed" for row in layers]
    return ("\n<p>Per part of the backbone (highlighted: a part that changed although frozen, or did not although "
            "trained):</p>\n" + table(["part", "config", "tensors changed", "max abs change"], rows, classes))


def backbone_verdict(proof: dict[str, Any]) -> str:
    """The proof in plain words, e.g. 'frozen and unchanged: consistent'."""
    frozen, changed = proof.get("freeze_backbone"), proof.get("backbone_changed")
    setting = {True: "frozen", False: "trained", None: "frozen or trained (not recorded)"}[frozen]
    if proof.get("first_trained_layer") is not None:
        setting = f"trained from layer {proof['first_trained_layer']} up, frozen below"
    outcome = {True: "changed", False: "unchanged", None: "change not recorded"}[changed]
    consistent = proof.get("consistent_with_config")
    if consistent is None:
        return f"{setting} and {outcome}"
    if consistent:
        return f"{setting} and {outcome}: consistent"
    why = ("a part changed against the config: see the table below" if proof.get("first_trained_layer") is not None
           else "something updated weights that should stay fixed" if frozen
           else "the encoder learning rate had no effect")
    return f"{setting} but {outcome}: INCONSISTENT ({why})"


def head_verdict(proof: dict[str, Any]) -> str:
    changed = proof.get("head_changed")
    if changed is None:
        return "change not recorded"
    return "changed, as training should" if changed else "UNCHANGED: the head did not learn (learning rate?)"


def split_sizes_section(metrics: RunMetrics) -> str:
    """Each split's size and its resolution: what one example is worth in the metric."""
    sizes = metrics.split_sizes
    if not sizes:
        return missing(f"{METRICS_FILE} has no split_sizes")
    metric = metrics.metric_name
    sources = metrics.data_sources or {}
    rows = [[cell(split), cell(size, "number"),
             cell(example_worth(size, metric) if isinstance(size, int) and size > 0 else "—"),
             cell(sources.get(split))]
            for split, size in sizes.items()]
    note = (f"<p>A difference of fewer than {RESOLUTION_EXAMPLES} val examples between two runs is below the "
            "resolution of the val set: no evidence of an effect, whatever the seeds say.</p>")
    return table(["split", "texts", "resolution", "source"], rows) + "\n" + note


def leakage_section(metrics: RunMetrics) -> str:
    """The counts of core/leakage.py, with a few of the texts."""
    leakage = metrics.leakage
    if not leakage:
        return missing(f"{METRICS_FILE} has no leakage (a run recorded before it was counted)")
    rows = [[cell(what), cell(leakage[kind]["exact"], "number"), cell(leakage[kind]["normalised"], "number"),
             cell("; ".join(leakage[kind]["examples"]))]
            for kind, what in (("train_repeats", "train rows that repeat a train text"),
                               ("val_in_train", "val texts also in train"),
                               ("test_in_train", "test texts also in train"))]
    conflicts = leakage["label_conflicts"]
    rows.append([cell("texts with two or more labels"), cell(""), cell(conflicts["texts"], "number"),
                 cell("; ".join(conflicts["examples"]))])
    dropped = leakage.get("dropped")
    note = (f"<p>data.drop_leaked: {dropped['val']} val and {dropped['test']} test rows were dropped before "
            "training; the scores above are without them.</p>" if dropped else "")
    return table(["", "exact", "normalised (case, spaces, punctuation)", "e.g."], rows) + note


def config_section(config: dict[str, Any] | None) -> str:
    if config is None:
        return missing(f"no {CONFIG_FILE}")
    defaults = config_settings(Config().to_plain())
    rows, row_classes = [], []
    for key, value in config_settings(config).items():
        default = defaults.get(key, "(not in the schema)")
        rows.append([cell(key), cell(json.dumps(value, ensure_ascii=False)),
                     cell(json.dumps(default, ensure_ascii=False) if key in defaults else default)])
        row_classes.append("changed" if key not in defaults or value != default else "")
    return ("<p>Highlighted: the keys this run set to something other than the default.</p>\n"
            + table(["key", "value", "default"], rows, row_classes))


# ---- building blocks -----------------------------------------------------------------------------


def missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def show(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def cell(value: Any, css_class: str = "", tag: str = "td") -> str:
    """One table cell, its text escaped (every table's text goes through here)."""
    class_attribute = f' class="{escape(css_class.strip())}"' if css_class.strip() else ""
    return f"<{tag}{class_attribute}>{escape(show(value))}</{tag}>"


def table(header: list[str] | None, rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """rows hold cells made by cell(); row_classes, when given, holds one CSS class per row ("" for none)."""
    lines = [f"<tr>{''.join(f'<th>{escape(name)}</th>' for name in header)}</tr>"] if header else []
    for cells, css_class in zip(rows, row_classes or [""] * len(rows), strict=True):
        opening = f'<tr class="{escape(css_class)}">' if css_class else "<tr>"
        lines.append(opening + "".join(cells) + "</tr>")
    return "<table>\n" + "\n".join(lines) + "\n</table>"


def key_value_table(pairs: list[tuple[str, Any]]) -> str:
    return table(None, [[cell(key, tag="th"), cell(value)] for key, value in pairs])


def format_seconds(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    minutes, rest = divmod(round(seconds), 60)
    return f"{seconds:.1f} s" + (f" ({minutes} min {rest} s)" if minutes else "")


def format_memory(peak_mb: Any) -> str | None:
    """{'process_rss': 993.2, 'cuda_allocated': 512.0} -> 'process_rss 993 MiB, cuda_allocated 512 MiB'."""
    if not isinstance(peak_mb, dict) or not peak_mb:
        return None
    return ", ".join(f"{kind} {value:.0f} MiB" for kind, value in peak_mb.items())
