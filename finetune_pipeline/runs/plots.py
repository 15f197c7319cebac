"""Training curves as PNG images: one run's loss, val score and learning rate, or several runs overlaid.

The figures use matplotlib's object API (`Figure`, no pyplot): pyplot keeps every figure in a global
registry until it is closed and picks a GUI backend; a bare Figure draws with Agg, needs no display,
and is freed like any other object once it goes out of scope.
"""

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from finetune_pipeline.runs.artifacts import METRICS_FILE, TRAIN_LOG_FILE
from finetune_pipeline.runs.run_metrics import DEFAULT_METRIC_NAME, RunMetrics
from finetune_pipeline.runtime.files import write_atomically
from finetune_pipeline.runtime.run_log import read_events

NO_DATA_TEXT = "no data yet"
TEN_COLORS = [f"C{index}" for index in range(10)]  # matplotlib's default cycle
MAX_LEGEND_COLUMNS = 3
LEGEND_ROWS_PER_COLUMN = 8
LEGEND_ROW_INCHES = 0.2


@dataclass
class RunCurves:
    """What train.log and metrics.json say about one run, as plottable lists."""

    label: str
    steps: list[int]  # from `event=step` lines: the optimizer step, counted over all epochs
    losses: list[float]  # mean train loss per example since the previous step line
    learning_rates: list[float]  # the head's learning rate (lr_head)
    epochs: list[int]  # from `event=epoch` lines
    val_scores: list[float]
    metric: str  # what val_score is: accuracy or macro_f1
    # the backbone's learning rate per step; all zeros (not plotted) when the backbone is frozen
    encoder_learning_rates: list[float] = field(default_factory=list)


def read_run_curves(run_dir: Path, label: str, metric: str | None = None) -> RunCurves:
    """A run folder's curves from one pass over train.log; a missing train.log gives empty lists. metric: what
    val_score is, when the caller has read metrics.json already (else it is read here, or the default)."""
    log_path = run_dir / TRAIN_LOG_FILE
    events = read_events(log_path) if log_path.exists() else []
    steps = [event for event in events if event["event"] == "step"]
    epochs = [event for event in events if event["event"] == "epoch"]
    return RunCurves(
        label=label,
        steps=[int(event["step"]) for event in steps],
        losses=[float(event["loss"]) for event in steps],  # float() reads "nan" and "inf" too
        learning_rates=[float(event["lr_head"]) for event in steps],
        epochs=[int(event["epoch"]) for event in epochs],
        val_scores=[float(event["val_score"]) for event in epochs],
        metric=metric or read_metric_name(run_dir),
        encoder_learning_rates=[float(event.get("lr_encoder", 0)) for event in steps],
    )


def read_metric_name(run_dir: Path) -> str:
    try:
        return RunMetrics.read(run_dir / METRICS_FILE).metric_name
    except FileNotFoundError:
        return DEFAULT_METRIC_NAME


def plot_run_curves(curves: RunCurves, path: Path) -> None:
    """curves.png: train loss per logged step, val score per epoch, learning rate per logged step."""
    figure = Figure(figsize=(14, 4), layout="constrained")
    loss_axes, score_axes, lr_axes = figure.subplots(1, 3)
    figure.suptitle(curves.label)

    draw_loss(loss_axes, [curves], TEN_COLORS[:1])
    draw_val_score(score_axes, [curves], curves.metric, TEN_COLORS[:1])

    set_labels(lr_axes, "learning rate", "optimizer step", "learning rate")
    if curves.steps:
        lr_axes.plot(curves.steps, curves.learning_rates, marker=".", label="head")
        if any(rate > 0 for rate in curves.encoder_learning_rates):  # a frozen backbone logs 0: no line
            lr_axes.plot(curves.steps, curves.encoder_learning_rates, marker=".", label="encoder")
            lr_axes.set_yscale("log")  # the encoder's rate is typically 50x smaller: flat on a linear axis
        lr_axes.legend()
    else:
        show_no_data(lr_axes)
    save_png(figure, path)


def plot_overlay(curves: list[RunCurves], path: Path) -> None:
    """Several runs on the same axes: train loss per logged step and val score per epoch, one line each,
    one color per run in both panels, and one legend below them (a sweep can have dozens of runs)."""
    columns = min(MAX_LEGEND_COLUMNS, math.ceil(len(curves) / LEGEND_ROWS_PER_COLUMN)) or 1
    legend_rows = math.ceil(len(curves) / columns)
    figure = Figure(figsize=(12, 4.5 + LEGEND_ROW_INCHES * legend_rows), layout="constrained")
    loss_axes, score_axes = figure.subplots(1, 2)
    metrics = {run.metric for run in curves}
    colors = run_colors(len(curves))
    draw_loss(loss_axes, curves, colors)
    draw_val_score(score_axes, curves, metrics.pop() if len(metrics) == 1 else DEFAULT_METRIC_NAME, colors)
    handles = {label: handle for axes in (loss_axes, score_axes)
               for handle, label in zip(*axes.get_legend_handles_labels(), strict=True)}
    if handles:
        figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=columns, fontsize="small")
    save_png(figure, path)


def run_colors(count: int) -> list:
    """Distinct colors: matplotlib's ten for up to ten runs, evenly spaced along a colormap beyond that."""
    if count <= len(TEN_COLORS):
        return TEN_COLORS[:count]
    return [colormaps["turbo"](index / (count - 1)) for index in range(count)]


def draw_loss(axes: Axes, runs: list[RunCurves], colors: list) -> None:
    """One line per run; nan/inf losses (a diverged run) are left out and counted in the title."""
    non_finite = 0
    for run, color in zip(runs, colors, strict=True):
        points = [(step, loss) for step, loss in zip(run.steps, run.losses, strict=True) if math.isfinite(loss)]
        non_finite += len(run.losses) - len(points)
        if points:  # a marker shows a lone point
            axes.plot(*zip(*points, strict=True), marker=".", label=run.label, color=color)
    title = "train loss" + (f" ({non_finite} nan/inf values not shown)" if non_finite else "")
    set_labels(axes, title, "optimizer step", "loss per example")
    if not axes.has_data():
        show_no_data(axes)


def draw_val_score(axes: Axes, runs: list[RunCurves], metric: str, colors: list) -> None:
    for run, color in zip(runs, colors, strict=True):
        if run.epochs:
            axes.plot(run.epochs, run.val_scores, marker="o", label=run.label, color=color)
    set_labels(axes, f"val {metric}", "epoch", metric)
    if not axes.has_data():
        show_no_data(axes)


def set_labels(axes: Axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole: no "epoch 1.5"


def show_no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, NO_DATA_TEXT, transform=axes.transAxes, ha="center", va="center", color="gray")
    axes.set_xticks([])
    axes.set_yticks([])


def regression_png(true: list[float], predicted: list[float]) -> bytes:
    """Predicted against true (the diagonal is a perfect prediction) and the residuals' histogram."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    scatter_axes, residual_axes = figure.subplots(1, 2)
    scatter_axes.scatter(true, predicted, s=6, alpha=0.5)
    low, high = min(true + predicted), max(true + predicted)
    scatter_axes.plot([low, high], [low, high], color="gray", linewidth=1)
    scatter_axes.set(title="predicted vs true", xlabel="true", ylabel="predicted")
    residual_axes.hist([p - t for t, p in zip(true, predicted, strict=True)], bins=40)
    residual_axes.set(title="residuals (predicted - true)", xlabel="residual", ylabel="examples")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def reliability_png(before: list[dict[str, float]], after: list[dict[str, float]]) -> bytes:
    """The reliability diagram: each confidence bin's accuracy against its mean confidence, before and after
    calibration (on the diagonal, a probability means what it says)."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="gray", linewidth=1, label="calibrated perfectly")
    for bins, label in ((before, "before (temperature 1)"), (after, "after (fitted on val)")):
        axes.plot([entry["confidence"] for entry in bins], [entry["accuracy"] for entry in bins], marker="o",
                  label=label)
    axes.set(title="reliability, test", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_png(figure: Figure, path: Path) -> None:
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100))
