"""End to end with the real packaged MiniLM on a slice of SST-2, through the command students type."""

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_DIR

SST2 = SHARED_DIR / "data" / "sst2"
pytestmark = pytest.mark.skipif(not SST2.is_dir(), reason=f"real data not found at {SST2} (../shared is absent)")


def sample_tsv(source: Path, target: Path, count: int, seed: int) -> Path:
    """A seeded random slice of a GLUE TSV file, header kept, written unchanged otherwise."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = random.Random(seed).sample(lines[1:], count)
    target.write_text(lines[0] + "".join(rows), encoding="utf-8")
    return target


def train_with_script(config: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "finetune_pipeline/scripts/train.py", "--config", str(config_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    run_dirs = list(Path(config["output"]["artifacts_root"]).glob("*"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(run_dirs) == 1
    return result, run_dirs[0]


@pytest.fixture
def sst2_slice(tmp_path: Path) -> dict:
    return {
        "train_file": str(sample_tsv(SST2 / "train.tsv", tmp_path / "train.tsv", 600, seed=1)),
        "val_file": str(sample_tsv(SST2 / "dev.tsv", tmp_path / "dev.tsv", 200, seed=2)),
        "test_file": str(sample_tsv(SST2 / "test.tsv", tmp_path / "test.tsv", 200, seed=3)),
        # the real headers differ: `sentence` in train.tsv, `content` in dev.tsv and test.tsv
        "text_column": "content",
        "columns": {"train": {"text_column": "sentence"}},
        "max_length": 64,
    }


def majority_share(path: str) -> float:
    with open(path, encoding="utf-8") as file:
        labels = [row["label"] for row in csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return max(labels.count(label) for label in set(labels)) / len(labels)


def test_frozen_minilm_learns_sst2_through_the_train_script(sst2_slice, tmp_path):
    config = {
        "data": sst2_slice,
        "training": {"epochs": 2, "batch_size": 16, "gradient_accumulation_steps": 1, "learning_rate": 0.002,
                     "mixed_precision": "fp16", "log_every_steps": 10},
        "output": {"artifacts_root": str(tmp_path / "artifacts")},
    }
    result, run_dir = train_with_script(config, tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["split_sizes"] == {"train": 600, "val": 200, "test": 200}
    assert metrics["label_names"] == ["0", "1"]
    # a head on frozen sentence embeddings must beat always answering the most common class
    assert metrics["best_val_score"] > majority_share(sst2_slice["val_file"]) + 0.1
    assert metrics["test_score"] > majority_share(sst2_slice["test_file"]) + 0.1
    assert metrics["mixed_precision"]["used"] != "fp16"
    proof = json.loads((run_dir / "freeze_proof.json").read_text())
    assert proof["backbone_changed"] is False and proof["consistent_with_config"] is True
    assert f"run folder: {run_dir}" in result.stdout


def test_full_fine_tuning_changes_minilm(sst2_slice, tmp_path):
    config = {
        "data": sst2_slice,
        "training": {"epochs": 1, "batch_size": 16, "gradient_accumulation_steps": 2, "freeze_backbone": False,
                     "encoder_learning_rate": 2e-5, "mixed_precision": "no"},
        "output": {"artifacts_root": str(tmp_path / "artifacts")},
    }
    _, run_dir = train_with_script(config, tmp_path)
    proof = json.loads((run_dir / "freeze_proof.json").read_text())
    assert proof["backbone_changed"] is True and proof["consistent_with_config"] is True
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["parameters"]["backbone_trainable"] > 20_000_000
