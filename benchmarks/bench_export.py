"""Predict throughput of an exported run, PyTorch against onnxruntime on this CPU, and the export's size on disk.

    python benchmarks/bench_export.py [--run-dir RUN_DIR] [--data FILE] [--batch-size 32] [--repeats 3] [--report PATH]

The run is --run-dir, or the newest completed run under finetune_pipeline/artifacts (`finetune train` makes
one). It is exported (`--format all`) into a throw-away folder; then each way of predicting labels every
text of the data file (default: the default dataset's test split, `finetune prepare-data` first), loaded
once and timed over --repeats passes (the fastest counts), with `finetune predict`'s tokenization, batches
and length sorting:
- torch, run folder: `finetune predict RUN_DIR`, in the run's precision where this CPU does it well;
- torch, export: `finetune predict RUN_DIR/export/hf`, float32;
- onnxruntime: `finetune predict RUN_DIR --runtime onnx`, float32 (onnxruntime's default threads);
- onnxruntime int8: `finetune predict RUN_DIR/export/onnx-int8 --runtime onnx` (dynamic quantization).
Tokenizing is inside the timing, as a user waits for it. The report also gives the largest difference of
probabilities between the float32 torch export and the others, each folder's size, and the test score each ONNX
folder states it measured through itself (classifier.json, written by the export).
"""

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT / "finetune_pipeline/data/rotten_tomatoes/test.csv"
DEFAULT_ARTIFACTS = REPO_ROOT / "finetune_pipeline/artifacts"


def newest_completed_run(artifacts: Path) -> Path:
    from finetune_pipeline.runs.run_lock import run_status

    runs = sorted(path for path in artifacts.glob("*") if (path / "metrics.json").is_file())
    completed = [path for path in runs if run_status(path) == "completed"]
    if not completed:
        sys.exit(f"no completed run under {artifacts}: run `finetune train` first, or pass --run-dir")
    return completed[-1]


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def measure(run_dir: Path, texts: list[str], batch_size: int, repeats: int, work: Path) -> dict[str, Any]:
    import torch

    from finetune_pipeline.core.batching import encode_texts
    from finetune_pipeline.serving.export import export_run
    from finetune_pipeline.serving.inference import load_classifier, predictions_for

    started = time.perf_counter()
    folders = export_run(run_dir, "all", output=work)
    results: dict[str, Any] = {"export_s": time.perf_counter() - started, "threads": torch.get_num_threads(),
                               "sizes_mib": {name: folder_mib(folder) for name, folder in folders.items()}}
    ways = {"torch, run folder": (run_dir, "torch"), "torch, export (fp32)": (folders["hf"], "torch"),
            "onnxruntime (fp32)": (folders["onnx"], "onnx"), "onnxruntime (int8)": (folders["onnx-int8"], "onnx")}
    probabilities = {}
    for name, (folder, runtime) in ways.items():
        started = time.perf_counter()
        classifier = load_classifier(folder, "best_model.pt", runtime)
        load_s = time.perf_counter() - started
        predictions_for(classifier, texts[:batch_size], batch_size)  # warm-up: first calls pick kernels
        passes = []
        for _ in range(repeats):
            encode_texts.cache_clear()  # every pass tokenizes, as a new predict call does
            started = time.perf_counter()
            predictions = predictions_for(classifier, texts, batch_size)
            passes.append(time.perf_counter() - started)
        probabilities[name] = [list(prediction.probabilities.values()) for prediction in predictions]
        precision = classifier.precision.used if runtime == "torch" else "int8" if "int8" in name else "no"
        results[name] = {"load_s": load_s, "pass_s": min(passes), "texts_per_s": len(texts) / min(passes),
                         "precision": "fp32" if precision == "no" else precision}
    results["max_difference"] = {
        other: float((torch.tensor(probabilities["torch, export (fp32)"]) - torch.tensor(probabilities[other]))
                     .abs().max())
        for other in ("onnxruntime (fp32)", "onnxruntime (int8)", "torch, run folder")
    }
    results["measured"] = {name: json.loads((folders[name] / "classifier.json").read_text())["measured_through_export"]
                           for name in ("onnx", "onnx-int8")}
    return results


def report(run_dir: Path, data: Path, count: int, batch_size: int, results: dict[str, Any]) -> str:
    lines = [
        f"# Export and predict, {date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "",
        f"Run `{run_dir.name}`; {count:,} texts of `{data}`, batch {batch_size}; torch threads {results['threads']}; "
        f"`finetune export --format all` took {results['export_s']:.1f} s.",
        "",
        "| predict with | precision | load | one pass | texts/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in ("torch, run folder", "torch, export (fp32)", "onnxruntime (fp32)", "onnxruntime (int8)"):
        row = results[name]
        lines.append(f"| {name} | {row['precision']} | {row['load_s']:.1f} s | {row['pass_s']:.2f} s | "
                     f"{row['texts_per_s']:,.0f} |")
    differences = results["max_difference"]
    lines += [
        "",
        f"Largest |Δ probability| against the torch export: onnxruntime {differences['onnxruntime (fp32)']:.1e}, "
        f"int8 {differences['onnxruntime (int8)']:.1e}, the run folder (its precision) "
        f"{differences['torch, run folder']:.1e}. The run's test split through each ONNX folder (its classifier.json): "
        + ", ".join(f"{name} " + ", ".join(f"{key} {value:.4f}" for key, value in scores.items()
                                            if key != "test_examples")
                    for name, scores in results["measured"].items()) + ".",
        "",
        "| folder | size on disk |",
        "| --- | ---: |",
        *(f"| {name}/ | {mib:,.1f} MiB |" for name, mib in results["sizes_mib"].items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=None, help="default: the newest completed run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a CSV file with a text column")
    parser.add_argument("--batch-size", type=int, default=32, help="as `finetune predict --batch-size`")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per way; the fastest counts")
    parser.add_argument("--report", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data}: not found; run `finetune prepare-data` first, or pass --data")
    run_dir = args.run_dir or newest_completed_run(DEFAULT_ARTIFACTS)
    with args.data.open(newline="", encoding="utf-8") as file:
        texts = [row["text"] for row in csv.DictReader(file)]
    with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
        results = measure(run_dir, texts, args.batch_size, args.repeats, Path(work))
    text = report(run_dir, args.data, len(texts), args.batch_size, results)
    print(text)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
