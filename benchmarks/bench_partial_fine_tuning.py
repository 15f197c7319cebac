"""Between frozen and full: the top layers on cached hidden states (E) and LoRA (F) against full fine-tuning (D).

    python benchmarks/bench_partial_fine_tuning.py [--runs D,E1,E2,E2-warm,F8] [--epochs 1] [--seed 42]
        [--set KEY=VALUE ...] [--float32-states] [--report PATH]

Every run is a fresh process (`finetune train`) on the default dataset (`finetune prepare-data` first), side by
side in one invocation, with D's batch profile (batch 4 x accumulation 2) and each preset's encoder learning rate
(D 1e-5, the best of its grid; E 3e-4 and F 5e-4, chosen on val), in a throw-away cache and artifacts folder. Per
run it prints:
- the epoch's training time (metrics.json history train_time_s: the optimizer steps alone, no validation) and
  its ratio to D's;
- for E, the one-off extraction of the hidden states (train.log `hidden_state_extraction` lines), stated apart,
  and whether the warm rerun ran any lower layer (it must not: every split a cache hit, no extraction line);
- trainable parameters, the optimizer state they need (AdamW: two float32 moments each), peak RSS;
- best val and test accuracy.
--set changes every run (e.g. training.encoder_learning_rate=1e-4, to find E's or F's learning rate).
--float32-states stores E's hidden states in float32 instead of float16: what the smaller storage costs in scores.
The targets (issue 20): top-1 epoch <= 0.3x and top-2 <= 0.5x of full fine-tuning's.
"""

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from project_process import finetune_train

from finetune_pipeline.runtime.run_log import read_events

D_PROFILE = {"training.freeze_backbone": False, "training.batch_size": 4, "training.gradient_accumulation_steps": 2,
             "training.encoder_learning_rate": 1e-5}
# the presets' learning rates: E's and F's chosen on val (see configs/experiments/E.json and F.json)
E_PROFILE = {**D_PROFILE, "training.encoder_learning_rate": 3e-4}
F_PROFILE = {**D_PROFILE, "training.encoder_learning_rate": 5e-4}
RUNS: dict[str, dict[str, Any]] = {
    "A": {"training.freeze_backbone": True},
    "D": D_PROFILE,
    "E1": {**E_PROFILE, "training.train_top_layers": 1},
    "E1-warm": {**E_PROFILE, "training.train_top_layers": 1},
    "E2": {**E_PROFILE, "training.train_top_layers": 2},
    "E2-warm": {**E_PROFILE, "training.train_top_layers": 2},
    "E3": {**E_PROFILE, "training.train_top_layers": 3},
    **{f"F{rank}": {**F_PROFILE, "model.lora.r": rank} for rank in (4, 8, 16)},
}


# `finetune train` with the hidden-state cache's storage type set to float32 first
FLOAT32_STATES = ("import sys, numpy; from finetune_pipeline.core import hidden_state_cache; "
                  "hidden_state_cache.STORAGE_DTYPE = numpy.float32; from finetune_pipeline.cli import main; "
                  "sys.exit(main(sys.argv[1:]))")


def train(name: str, overrides: dict[str, Any], epochs: int, seed: int, work: Path,
          float32_states: bool = False) -> dict[str, Any]:
    sets = {**overrides, "training.epochs": epochs, "seed": seed,
            "output.artifacts_root": str(work / "artifacts" / name), "output.cache_dir": str(work / "cache")}
    started = time.perf_counter()
    run_dir, metrics = finetune_train(name, sets, ["-c", FLOAT32_STATES] if float32_states else None)
    extraction = sum(float(event["seconds"]) for event in read_events(run_dir / "train.log", "hidden_state_extraction"))
    epoch_seconds = [epoch["train_time_s"] for epoch in metrics["history"]]
    return {"name": name, "command_s": time.perf_counter() - started, "epoch_train_s": sum(epoch_seconds) / len(epoch_seconds),
            "extraction_s": extraction, "hidden_state_cache": metrics.get("hidden_state_cache"),
            "trainable": metrics["parameters"]["trainable"],
            "optimizer_state_mib": metrics["parameters"]["trainable"] * 2 * 4 / 2**20,
            "peak_rss_mib": metrics["peak_memory_mb"]["process_rss"], "best_val": metrics["best_val_score"],
            "test": metrics["test_score"], "precision": metrics["mixed_precision"]["used"]}


def report(rows: list[dict[str, Any]], epochs: int, seed: int, extra: dict[str, Any]) -> str:
    reference = next((row["epoch_train_s"] for row in rows if row["name"] == "D"), None)
    lines = [f"# Partial fine-tuning, {date.today().isoformat()}, {platform.processor() or platform.machine()}, "
             f"{epochs} epoch(s), seed {seed}, precision used {rows[0]['precision']}" + (f", {extra}" if extra else ""),
             "",
             "| run | epoch (training) s | x D | extraction s | cache | trainable | AdamW state MiB | peak RSS MiB | "
             "best val | test | process s |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ratio = f"{row['epoch_train_s'] / reference:.2f}" if reference else "—"
        cache = ",".join(sorted(set((row["hidden_state_cache"] or {}).values()))) or "—"
        lines.append(f"| {row['name']} | {row['epoch_train_s']:.1f} | {ratio} | {row['extraction_s']:.1f} | {cache} | "
                     f"{row['trainable']:,} | {row['optimizer_state_mib']:.1f} | {row['peak_rss_mib']:,.0f} | "
                     f"{row['best_val']:.4f} | {row['test']:.4f} | {row['command_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="A,D,E1,E1-warm,E2,E2-warm", help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run (JSON value)")
    parser.add_argument("--float32-states", action="store_true", help="E's hidden states in float32, not float16")
    parser.add_argument("--report", type=Path, help="also write the table there")
    arguments = parser.parse_args()
    names = arguments.runs.split(",")
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        raise SystemExit(f"--runs: unknown {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    extra = {key: json.loads(value) for key, value in (assignment.split("=", 1) for assignment in arguments.set)}
    with tempfile.TemporaryDirectory() as work:
        rows = []
        for name in names:
            rows.append(train(name, {**RUNS[name], **extra}, arguments.epochs, arguments.seed, Path(work),
                              arguments.float32_states))
            print(json.dumps(rows[-1]), flush=True)
    table = report(rows, arguments.epochs, arguments.seed, extra)
    print(table)
    if arguments.report:
        arguments.report.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
