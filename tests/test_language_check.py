"""A backbone whose tokenizer does not know the texts' language is reported, before training and in the run."""

import json
import re

import pytest

from finetune_pipeline import cli
from finetune_pipeline.core.batching import tokenize_split
from finetune_pipeline.core.config import DEFAULT_BACKBONE
from finetune_pipeline.core.data import Example
from finetune_pipeline.core.language_check import language_warning, tokenization_report
from finetune_pipeline.core.model import load_tokenizer
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime.run_log import read_events
from tests.conftest import write_csv

ENGLISH = ["A warm, funny film with a heart of gold.", "Dull and far too long; I left halfway through.",
           "The actors are fine but the story goes nowhere.", "One of the best thrillers of the year."]
RUSSIAN = ["Тёплый и смешной фильм с добрым сердцем.", "Скучно и слишком долго, ушёл с середины.",
           "Актёры хороши, но история никуда не ведёт.", "Один из лучших триллеров года."]


def report_for(texts: list[str], tokenizer) -> dict:
    examples = [Example(text, "pos" if index % 2 else "neg", index + 2) for index, text in enumerate(texts)]
    split = tokenize_split(examples, ["neg", "pos"].index, tokenizer, max_length=64)
    return tokenization_report({"train": examples}, {"train": split}, tokenizer)


def test_the_default_english_backbone_warns_on_cyrillic_text_and_not_on_english():
    tokenizer, _ = load_tokenizer(DEFAULT_BACKBONE)
    english, russian = report_for(ENGLISH, tokenizer)["train"], report_for(RUSSIAN, tokenizer)["train"]
    assert english["script"] == "LATIN" and english["tokens_per_word"] < 1.6
    assert russian["script"] == "CYRILLIC" and russian["tokens_per_word"] > 4  # letters one by one
    assert language_warning(report_for(ENGLISH, tokenizer), DEFAULT_BACKBONE) is None
    warning = language_warning(report_for(RUSSIAN, tokenizer), DEFAULT_BACKBONE)
    assert f"the backbone '{DEFAULT_BACKBONE}' probably does not know the language" in warning
    assert "(Cyrillic script)" in warning and "tokens per word" in warning
    assert "--set model.backbone=cointegrated/rubert-tiny2" in warning


def test_many_unknown_tokens_warn_too(tiny_backbone_dir):
    """The tiny test BERT has an English word vocabulary: a Russian word is one [UNK]."""
    tokenizer, _ = load_tokenizer(str(tiny_backbone_dir))
    report = report_for(RUSSIAN, tokenizer)
    assert report["train"]["unknown_token_share"] == 1.0
    assert "100% unknown tokens" in language_warning(report, "tiny")
    assert language_warning(report_for(["good movie", "bad plot", "the film was fun"], tokenizer), "tiny") is None


def test_unspaced_scripts_are_judged_by_unknown_tokens_only():
    report = {"train": {"script": "CJK", "tokens_per_word": 30.0, "unknown_token_share": 0.0}}
    assert language_warning(report, "some-chinese-model") is None


def test_the_dry_run_and_the_run_report_it(make_config, tmp_path, capsys):
    rows = [(text, label) for _ in range(12) for text, label in zip(RUSSIAN, ["pos", "neg", "neg", "pos"])]
    data = {name: str(write_csv(tmp_path / f"{name}.csv", rows)) for name in ("train", "val", "test")}
    config = make_config(data={"train_file": data["train"], "val_file": data["val"], "test_file": data["test"]},
                         training={"epochs": 1})
    config_path = tmp_path / "russian.json"
    config_path.write_text(json.dumps(config.to_plain()))
    assert cli.main(["train", "--config", str(config_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    # a word and its full stop are two [UNK]: 8 tokens for the 7 words of the first text, for example
    assert re.search(r"tokens per word: train 1\.\d\d, val 1\.\d\d, test 1\.\d\d; unknown tokens in train 100\.0% "
                     r"\(Cyrillic script\)", printed)
    assert "WARNING: the backbone" in printed
    run_dir = run_training(config)  # training still runs
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "does not know the language" in metrics["language_warning"]
    assert metrics["tokenization"]["val"]["script"] == "CYRILLIC"
    [event] = read_events(run_dir / "train.log", "language_warning")
    assert "does not know the language" in event["message"]


def test_english_toy_data_gets_no_warning(make_config):
    run_dir = run_training(make_config(training={"epochs": 1}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["language_warning"] is None and metrics["tokenization"]["train"]["unknown_token_share"] == 0
    assert read_events(run_dir / "train.log", "language_warning") == []
    [event] = read_events(run_dir / "train.log", "tokenization")
    assert float(event["train_tokens_per_word"]) == pytest.approx(1.0)
