"""curves.png, report.html and the TensorBoard handler, on real tiny runs and on run folders that stopped early."""

import json
import logging
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from finetune_pipeline.core import task
from finetune_pipeline.errors import OutOfMemory
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.plots import RunCurves, plot_overlay, plot_run_curves, read_run_curves
from finetune_pipeline.runs.report import write_run_report
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runs.tensorboard_log import open_tensorboard
from finetune_pipeline.runtime import files, run_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.METRICS_FILE).read_text())


def html_section(page: str, title: str) -> str:
    """The HTML between <h2>title</h2> and the next <h2>."""
    return page.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def assert_self_contained(page: str) -> None:
    """Nothing that makes a browser fetch anything: no URLs, no linked files, no scripts."""
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page.lower() and "<script" not in page.lower() and "@import" not in page
    sources = re.findall(r"""src\s*=\s*["']?([^"' >]*)""", page)
    assert sources and all(source.startswith("data:") for source in sources)
    assert all(url.startswith("data:") for url in re.findall(r"""url\(\s*["']?([^)"']*)""", page))


def test_report_of_a_completed_run(make_config):
    run_dir = run_training(make_config())
    metrics = read_metrics(run_dir)

    paths = write_run_report(run_dir)

    assert paths == [run_dir / "curves.png", run_dir / "report.html"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    page = paths[1].read_text(encoding="utf-8")
    assert_self_contained(page)
    assert 'class="status completed"' in page
    assert f"{metrics['best_val_score']:.4f}" in html_section(page, "Headline")
    assert f"{metrics['test_score']:.4f}" in html_section(page, "Headline")
    assert "frozen and unchanged: consistent" in html_section(page, "Freeze proof")
    # the confusion matrix: the label names as row heads, the counts in row order
    confusion = html_section(page, "Confusion matrix")
    assert re.findall(r"<tr><th>([^<]*)</th><td", confusion) == metrics["label_names"] == ["neg", "pos"]
    counts = [int(count) for count in re.findall(r"<td[^>]*>(\d+)</td>", confusion)]
    assert counts == [count for row in metrics["test_metrics"]["confusion_matrix"] for count in row]
    assert sum(counts) == metrics["split_sizes"]["test"] == 16
    # what one example is worth on each split: 16 val texts, so one answer moves accuracy by 6.25 points
    sizes = html_section(page, "Split sizes and resolution")
    assert '<td>val</td><td class="number">16</td><td>one example = 0.0625 of accuracy (6.25 points)</td>' in sizes
    assert "fewer than 3 val examples" in sizes
    # make_config sets model.hidden_dim to 16 (default 256) and keeps model.pooling at its default
    config = html_section(page, "Config")
    assert '<tr class="changed"><td>model.hidden_dim</td><td>16</td><td>256</td></tr>' in config
    assert '<tr><td>model.pooling</td><td>&quot;mean&quot;</td><td>&quot;mean&quot;</td></tr>' in config
    highlighted = set(re.findall(r'<tr class="changed"><td>([^<]*)</td>', config))
    assert {"seed", "model.hidden_dim", "model.dropout", "training.epochs", "training.batch_size"} <= highlighted
    assert not highlighted & {"model.pooling", "training.scheduler", "training.freeze_backbone", "data.text_column"}


def test_curves_are_read_from_train_log_and_metrics(make_config):
    run_dir = run_training(make_config(training={"log_every_steps": 1, "metric": "macro_f1"}))
    steps = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")

    curves = read_run_curves(run_dir, label="tiny")

    assert curves.steps == [int(event["step"]) for event in steps] == list(range(1, len(steps) + 1))
    assert curves.losses == [float(event["loss"]) for event in steps]
    assert curves.learning_rates == [float(event["lr_head"]) for event in steps]
    history = read_metrics(run_dir)["history"]
    assert curves.epochs == [entry["epoch"] for entry in history] == [1, 2]
    assert curves.val_scores == pytest.approx([entry["val_score"] for entry in history], rel=1e-5)
    assert curves.metric == "macro_f1"


def test_report_of_a_run_stopped_after_training_uses_the_val_metrics(make_config):
    run_dir = run_training(make_config())
    metrics = read_metrics(run_dir)
    files.write_json(run_dir / artifacts.METRICS_FILE,
                         {**metrics, "status": "interrupted", "test_score": None, "test_metrics": None})
    (run_dir / artifacts.FREEZE_PROOF_FILE).unlink()

    page = write_run_report(run_dir)[1].read_text(encoding="utf-8")

    assert 'class="status interrupted"' in page
    assert "freeze_proof.json: not written" in page
    assert "val split, best epoch" in html_section(page, "Per class")
    counts = [int(count) for count in re.findall(r"<td[^>]*>(\d+)</td>", html_section(page, "Confusion matrix"))]
    assert counts == [count for row in metrics["val_metrics"]["confusion_matrix"] for count in row]


def test_report_of_a_run_that_ran_out_of_memory_during_training(make_config, monkeypatch):
    """A real failed run: its error message (with the advice) spans several train.log lines."""
    calls = {"count": 0}
    real_cross_entropy = torch.nn.functional.cross_entropy

    def cross_entropy_out_of_memory(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] >= 5:  # after two logged optimizer steps
            raise torch.OutOfMemoryError("out of memory: tried to allocate 2.00 GiB")
        return real_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(task.F, "cross_entropy", cross_entropy_out_of_memory)
    config = make_config(training={"log_every_steps": 1})
    with pytest.raises(OutOfMemory):
        run_training(config)
    run_dir = next(Path(config.output.artifacts_root).iterdir())

    paths = write_run_report(run_dir)

    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    page = paths[1].read_text(encoding="utf-8")
    assert_self_contained(page)
    assert 'class="status failed"' in page
    assert "tried to allocate 2.00 GiB" in page and "data.max_length=32" in page  # the error and its advice
    assert "no freeze_proof.json" in html_section(page, "Freeze proof")
    assert "model.hidden_dim" in html_section(page, "Config")


def test_report_of_a_failed_run_with_only_config_and_metrics(make_config, tmp_path):
    run_dir = tmp_path / "failed-run"
    run_dir.mkdir()
    files.write_json(run_dir / artifacts.CONFIG_FILE, make_config().to_plain())
    error = "OutOfMemory: out of memory during training: <alloc failed>\nlower data.max_length"
    files.write_json(run_dir / artifacts.METRICS_FILE, {"status": "failed", "error": error})

    paths = write_run_report(run_dir)

    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    page = paths[1].read_text(encoding="utf-8")
    assert_self_contained(page)
    assert 'class="status failed"' in page
    assert "&lt;alloc failed&gt;\nlower data.max_length" in page  # the error, escaped
    assert "train.log: not written" in page and "freeze_proof.json: not written" in page
    assert "not recorded" in html_section(page, "Headline")  # best_val_score and friends
    assert "model.hidden_dim" in html_section(page, "Config")


def test_report_of_an_empty_folder_and_an_unreadable_train_log(tmp_path):
    # an error message with a newline spans two train.log lines; the second is not key=value pairs
    (tmp_path / artifacts.TRAIN_LOG_FILE).write_text(
        "2026-11-24 11:40:02 event=step epoch=1 step=1 loss=0.69 lr_head=0.001 lr_encoder=0\n"
        "2026-11-24 11:40:03 event=failed error='OutOfMemory: no\nmore memory'\n")

    page = write_run_report(tmp_path)[1].read_text(encoding="utf-8")

    assert "train.log: could not be read" in page
    assert "metrics.json: not written" in page and "config.json: not written" in page
    assert 'class="status unknown"' in page


def test_plots_survive_nan_losses_empty_runs_and_overlays(tmp_path):
    diverged = RunCurves("diverged", [1, 2, 3], [0.7, math.nan, math.inf], [1e-3, 1e-3, 1e-3], [1], [0.5],
                         "accuracy", encoder_learning_rates=[2e-5, 2e-5, 2e-5])
    empty = RunCurves("empty", [], [], [], [], [], "score")
    for name, curves in (("diverged.png", diverged), ("empty.png", empty)):
        plot_run_curves(curves, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    plot_overlay([diverged, empty], tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["diverged.png", "empty.png", "overlay.png"]


def test_tensorboard_handler_writes_the_logged_scalars(make_config, tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = make_config()
    handler = open_tensorboard(tmp_path)
    run_log.logger.addHandler(handler)
    try:
        run_dir = run_training(config)
    finally:
        run_log.logger.removeHandler(handler)
    metrics = read_metrics(run_dir)
    handler.write_hparams(config.to_plain(), metrics)
    handler.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")
    assert [(scalar.step, scalar.value) for scalar in events.Scalars("train/loss")] == [
        (int(event["step"]), pytest.approx(float(event["loss"]), rel=1e-6)) for event in logged]
    assert [scalar.step for scalar in events.Scalars("val/score")] == [1, 2]
    assert [scalar.value for scalar in events.Scalars("val/score")] == pytest.approx(
        [entry["val_score"] for entry in metrics["history"]], rel=1e-6)
    assert events.Scalars("test/score")[0].value == pytest.approx(metrics["test_score"], rel=1e-6)
    assert events.Scalars("hparam/best_val_score")[0].value == pytest.approx(metrics["best_val_score"], rel=1e-6)


def test_tensorboard_handler_skips_values_that_are_not_finite_numbers(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    handler = open_tensorboard(tmp_path)
    for message in ("event=step epoch=1 step=3 loss=nan lr_head=abc lr_encoder=inf samples_per_s=12.5",
                    "event=step step=oops loss=0.5", "event=start run_dir='/tmp/a b'", "not key=value 'text"):
        handler.handle(logging.makeLogRecord({"msg": message, "levelno": logging.INFO}))
    handler.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train/samples_per_s"]
    assert [(scalar.step, scalar.value) for scalar in events.Scalars("train/samples_per_s")] == [(3, 12.5)]


def test_open_tensorboard_without_tensorboard_returns_none(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    assert open_tensorboard(tmp_path) is None
    assert not (tmp_path / "tensorboard").exists()
