"""Shared fixtures: a tiny randomly initialised BERT (no download, seconds to train) and a toy dataset."""

import csv
import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

from finetune_pipeline.core.config import Config, config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

POSITIVE_WORDS = ["good", "great", "fine", "love", "nice", "fun", "best", "happy"]
NEGATIVE_WORDS = ["bad", "awful", "poor", "hate", "dull", "boring", "worst", "sad"]
FILLER_WORDS = ["the", "movie", "was", "a", "plot", "actor", "film", "really", "quite", "story"]


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT saved as a local Hugging Face folder, with a word-level vocab."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE_WORDS, *NEGATIVE_WORDS, *FILLER_WORDS]
    BertTokenizer(vocab={word: index for index, word in enumerate(vocab)}).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_ids_to_tokens(tokenizer("good movie")["input_ids"]) == ["[CLS]", "good", "movie", "[SEP]"]
    return folder


def toy_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """Short texts whose label is carried by a sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = "pos" if index % 2 == 0 else "neg"
        words = rng.sample(FILLER_WORDS, 4) + [rng.choice(POSITIVE_WORDS if label == "pos" else NEGATIVE_WORDS)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def toy_data(tmp_path: Path) -> dict[str, str]:
    return {
        "train_file": str(write_csv(tmp_path / "train.csv", toy_rows(48, seed=1))),
        "val_file": str(write_csv(tmp_path / "val.csv", toy_rows(16, seed=2))),
        "test_file": str(write_csv(tmp_path / "test.csv", toy_rows(16, seed=3))),
    }


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base or {})  # a key that is null in base (training.class_weights) takes the overrides
    for key, value in overrides.items():
        merged[key] = deep_merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


@pytest.fixture
def make_config(tmp_path: Path, tiny_backbone_dir: Path, toy_data: dict[str, str]):
    """A fast config on the tiny model and toy data; keyword sections override it."""

    def build(**overrides: Any) -> Config:
        base = {
            "seed": 7,
            "data": {**toy_data, "max_length": 32},
            "model": {"backbone": str(tiny_backbone_dir), "hidden_dim": 16, "dropout": 0.0},
            "training": {"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 0.01,
                         "encoder_learning_rate": 0.001, "mixed_precision": "no", "log_every_steps": 2,
                         "device": "cpu"},
            "output": {"artifacts_root": str(tmp_path / "artifacts"), "cache_dir": str(tmp_path / "cache")},
        }
        return config_from_dict(deep_merge(base, overrides))

    return build


@pytest.fixture(autouse=True)
def no_console_handler_left_behind():
    """cli.main() adds a console handler bound to this test's captured stderr, which closes when the test ends;
    a later test logging through it would print a logging error instead."""
    yield
    from finetune_pipeline.runtime.run_log import logger

    for handler in [handler for handler in logger.handlers if handler.get_name() == "console"]:
        logger.removeHandler(handler)
    logger.propagate = True  # the CLI turns it off; pytest's log capture needs it


def without_score_flags(warnings: list[str]) -> list[str]:
    """compare's warnings but the score flags (runs/baselines.py): the toy runs of tests that check something
    else may well score no better than their baselines, and are rightly flagged for it."""
    return [warning for warning in warnings
            if "without reading the text" not in warning and "the model answers" not in warning]
