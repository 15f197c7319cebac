"""The frozen-feature cache: same results as running the backbone every step, reused when valid only."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import files, run_log
from tests.conftest import REPO_ROOT, toy_rows, write_csv


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.METRICS_FILE).read_text())


def cache_events(run_dir: Path) -> dict[str, str]:
    return {event["split"]: event["status"] for event in run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "feature_cache")}


def cache_files(config) -> list[Path]:
    return sorted(Path(config.output.cache_dir).glob("features-*.pt"))


def test_cached_features_give_the_same_run_as_the_backbone_every_step(make_config):
    frozen = {"freeze_backbone": True, "epochs": 3, "batch_size": 4, "gradient_accumulation_steps": 2}
    cached = metrics_of(run_training(make_config(model={"dropout": 0.2}, training={**frozen, "cache_features": True})))
    uncached = metrics_of(run_training(make_config(model={"dropout": 0.2}, training={**frozen, "cache_features": False})))
    assert cached["feature_cache"] == {"train": "miss", "val": "miss", "test": "miss"}
    assert "feature_cache" not in uncached
    for key in ("best_val_score", "best_epoch", "test_score"):
        assert cached[key] == uncached[key], key
    assert cached["val_metrics"]["confusion_matrix"] == uncached["val_metrics"]["confusion_matrix"]
    for with_cache, without in zip(cached["history"], uncached["history"], strict=True):
        assert with_cache["train_loss"] == pytest.approx(without["train_loss"], rel=1e-5)


def test_second_run_hits_the_cache_and_head_only_changes_still_hit(make_config):
    first_config = make_config()
    first = run_training(first_config)
    assert cache_events(first) == {"train": "miss", "val": "miss", "test": "miss"}
    assert len(cache_files(first_config)) == 3
    again = run_training(make_config())
    assert cache_events(again) == {"train": "hit", "val": "hit", "test": "hit"}
    assert metrics_of(again)["test_metrics"] == metrics_of(first)["test_metrics"]
    head_only = run_training(make_config(model={"hidden_dim": 8, "dropout": 0.3},
                                         training={"learning_rate": 0.003, "epochs": 1, "batch_size": 2}))
    assert set(cache_events(head_only).values()) == {"hit"}
    assert len(cache_files(first_config)) == 3


@pytest.mark.parametrize("change", ["pooling", "max_length", "train_data"])
def test_inputs_that_change_the_features_miss_the_cache(make_config, tmp_path, change):
    # texts of 3 x 5 words: max_length 8 cuts them, the default 32 does not
    long_texts = {name: str(write_csv(tmp_path / f"long-{name}.csv",
                                      [(" ".join([text] * 3), label) for text, label in toy_rows(16, seed)]))
                  for name, seed in (("train_file", 1), ("val_file", 2), ("test_file", 3))}
    run_training(make_config(data=long_texts))
    changed = {
        "pooling": lambda: make_config(data=long_texts, model={"pooling": "cls"}),
        "max_length": lambda: make_config(data={**long_texts, "max_length": 8}),
        "train_data": lambda: make_config(data={**long_texts, "train_file": str(write_csv(tmp_path / "new.csv",
                                                                                           toy_rows(16, 99)))}),
    }[change]()
    expected = {"train": "miss", "val": "hit", "test": "hit"} if change == "train_data" else \
        {"train": "miss", "val": "miss", "test": "miss"}
    assert cache_events(run_training(changed)) == expected


def test_the_key_holds_backbone_weights_pooling_precision_and_device(make_config):
    from finetune_pipeline.core.batching import TokenizedSplit
    from finetune_pipeline.core.device import Precision
    from finetune_pipeline.core.feature_cache import cache_key

    split = TokenizedSplit([[2, 5, 3]], [0], pad_token_id=0, untruncated_lengths=[3])
    fp32, bf16 = Precision("no", "no", ""), Precision("fp16", "bf16", "cpu")
    cpu = torch.device("cpu")
    base = cache_key(split, "m", "aaa", "mean", fp32, cpu)
    assert base == cache_key(split, "m", "aaa", "mean", fp32, cpu)
    assert base != cache_key(split, "m", "bbb", "mean", fp32, cpu)
    assert base != cache_key(split, "m", "aaa", "cls", fp32, cpu)
    assert base != cache_key(split, "m", "aaa", "mean", bf16, cpu)
    assert base != cache_key(split, "m", "aaa", "mean", fp32, torch.device("meta"))
    other_tokens = TokenizedSplit([[2, 6, 3]], [0], pad_token_id=0, untruncated_lengths=[3])
    assert base != cache_key(other_tokens, "m", "aaa", "mean", fp32, cpu)


def test_corrupt_tampered_or_foreign_cache_entries_are_rebuilt_never_used(make_config):
    config = make_config()
    reference = metrics_of(run_training(config))
    truncated, tampered, foreign = cache_files(config)
    truncated.write_bytes(truncated.read_bytes()[:100])  # as a full disk would leave it
    entry = torch.load(tampered, weights_only=True)
    entry["features"] = entry["features"] + 1.0  # same key, other numbers
    torch.save(entry, tampered)
    entry = torch.load(foreign, weights_only=True)
    entry["key"]["pooling"] = "cls"  # a file made for other inputs under this name
    torch.save(entry, foreign)
    rerun = run_training(make_config())
    reasons = sorted(status for status in cache_events(rerun).values())
    assert all(reason.startswith("rebuilt:") for reason in reasons), reasons
    assert any("unreadable" in reason for reason in reasons)
    assert any("checksum" in reason for reason in reasons)
    assert any("other inputs" in reason for reason in reasons)
    assert metrics_of(rerun)["test_metrics"] == reference["test_metrics"]
    assert set(cache_events(run_training(make_config())).values()) == {"hit"}


def test_cache_switch_off_writes_no_cache_and_says_so(make_config):
    config = make_config(training={"cache_features": False})
    run_dir = run_training(config)
    assert not Path(config.output.cache_dir).exists()
    setup = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "setup")[0]
    assert setup["feature_cache"] == "False"


def test_on_cached_features_each_optimizer_step_is_one_fused_pass(make_config):
    """Accumulation saves no memory on cached features: batch 1 x 8 runs as 8 x 1, with identical results,
    and the uncached path (real micro-batches through the backbone) agrees up to float rounding."""
    def final_state(batch_size: int, accumulation: int, cache: bool) -> tuple[dict, Path]:
        config = make_config(training={"freeze_backbone": True, "cache_features": cache, "epochs": 2,
                                       "batch_size": batch_size, "gradient_accumulation_steps": accumulation})
        run_dir = run_training(config)
        return files.load_checkpoint(run_dir / artifacts.FINAL_MODEL_FILE)["model_state"], run_dir

    one_by_eight, fused_run = final_state(1, 8, cache=True)
    eight_by_one, _ = final_state(8, 1, cache=True)
    accumulated, unfused_run = final_state(1, 8, cache=False)
    assert all(torch.equal(one_by_eight[name], eight_by_one[name]) for name in one_by_eight)
    assert all(torch.allclose(one_by_eight[name], accumulated[name], atol=1e-5) for name in one_by_eight)
    [event] = run_log.read_events(fused_run / artifacts.TRAIN_LOG_FILE, "fused_micro_batches")
    assert event["examples_per_pass"] == "8"
    assert run_log.read_events(unfused_run / artifacts.TRAIN_LOG_FILE, "fused_micro_batches") == []


def test_a_cold_run_extracts_each_missing_split_alone(make_config):
    config = make_config()
    first = run_training(config)
    extractions = run_log.read_events(first / artifacts.TRAIN_LOG_FILE, "feature_extraction")
    assert [(event["split"], event["examples"]) for event in extractions] == [
        ("train", "48"), ("val", "16"), ("test", "16")]
    # each split's entry holds exactly its own rows: another run finds them all
    assert cache_events(run_training(config)) == {"train": "hit", "val": "hit", "test": "hit"}
    assert run_log.read_events(run_training(config) / artifacts.TRAIN_LOG_FILE, "feature_extraction") == []
    entries = {path: files.load_checkpoint(path)["features"] for path in cache_files(config)}
    for features in entries.values():  # no entry holds the other splits' rows (a saved view would)
        assert features.untyped_storage().nbytes() == features.numel() * features.element_size()
    next(path for path, features in entries.items() if len(features) == 16).unlink()
    # one entry of 16 rows gone: only that split is extracted again
    third = run_training(config)
    [extraction] = run_log.read_events(third / artifacts.TRAIN_LOG_FILE, "feature_extraction")
    assert extraction["examples"] == "16" and extraction["split"] in ("val", "test")
    assert sorted(cache_events(third).values()) == ["hit", "hit", "miss"]


def setup_event(run_dir: Path) -> dict[str, str]:
    return run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "setup")[0]


def test_a_fully_cached_rerun_never_loads_the_backbone_and_gives_the_same_run(make_config, monkeypatch):
    cold = run_training(make_config())
    assert setup_event(cold)["backbone_loaded"] == "True"

    def no_weights(backbone: str) -> None:
        raise AssertionError("the backbone's weights were loaded")

    monkeypatch.setattr("finetune_pipeline.runs.preparation.load_backbone", no_weights)
    warm = run_training(make_config())
    assert setup_event(warm)["backbone_loaded"] == "False"
    cold_metrics, warm_metrics = metrics_of(cold), metrics_of(warm)
    for key in ("best_val_score", "best_epoch", "test_score", "test_metrics", "backbone_sha256", "parameters"):
        assert warm_metrics[key] == cold_metrics[key], key
    assert [epoch["train_loss"] for epoch in warm_metrics["history"]] == \
        [epoch["train_loss"] for epoch in cold_metrics["history"]]
    proof = json.loads((warm / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["backbone_changed"] is False and proof["consistent_with_config"] is True
    assert proof["backbone_tensors"] == {} and "not loaded" in proof["backbone_checked"]
    cold_proof = json.loads((cold / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["summary"]["backbone_tensors_total"] == cold_proof["summary"]["backbone_tensors_total"]
    # the head-only checkpoint of a warm run loads with the backbone from disk, which checks its fingerprint
    monkeypatch.undo()
    assert artifacts.load_run(warm).model.backbone is not None


def test_a_rewritten_weight_file_is_hashed_again(make_config, tiny_backbone_dir, tmp_path):
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_backbone_dir, backbone)
    config = make_config(model={"backbone": str(backbone)})
    run_training(config)
    weights = next(backbone.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # same weights, new modification time: the memo must not trust it
    same_weights = run_training(config)
    assert setup_event(same_weights)["backbone_loaded"] == "True"
    assert set(cache_events(same_weights).values()) == {"hit"}  # same tensors, same fingerprint, same features
    assert setup_event(run_training(config))["backbone_loaded"] == "False"

    state = load_file(weights)
    save_file({name: tensor + 0.5 if tensor.is_floating_point() else tensor for name, tensor in state.items()},
              weights, metadata={"format": "pt"})
    other_weights = run_training(config)
    assert setup_event(other_weights)["backbone_loaded"] == "True"
    assert set(cache_events(other_weights).values()) == {"miss"}


def test_the_memo_covers_local_folders_only(tiny_backbone_dir):
    from finetune_pipeline.core.backbone_memo import weight_files_signature

    assert weight_files_signature("sentence-transformers/all-MiniLM-L6-v2") is None
    signature = weight_files_signature(str(tiny_backbone_dir))
    assert signature is not None and any(str(tiny_backbone_dir.resolve()) in str(part) for part in signature)


def test_a_fully_cached_rerun_does_not_import_the_model_code(make_config, tmp_path):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(make_config().to_plain()))
    script = ("import sys; from finetune_pipeline.core.config import load_config; from finetune_pipeline.runs.run import "
              f"run_training; run_training(load_config({str(config_path)!r})); "
              "print('model code imported:', 'transformers.modeling_utils' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cold, warm = (subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
                  for _ in range(2))
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    assert "model code imported: True" in cold.stdout
    assert "model code imported: False" in warm.stdout


def test_a_splits_features_do_not_depend_on_the_splits_extracted_with_it(make_config, tmp_path):
    """Under bf16 a text's features change a little with the batch it runs in. Each split is extracted alone, so
    its cached features are what its key says whatever else was missing: `finetune evaluate` recomputes them
    exactly, and another run that finds them in the cache gets what it would have computed."""
    from functools import partial

    from finetune_pipeline.core.feature_cache import extract_features, extract_missing
    from finetune_pipeline.runs.preparation import prepare_run

    # the test texts come between train's and val's in length: extracted together, they share train's batch
    longer = {name: write_csv(tmp_path / f"{name}.csv", [(" ".join([text] * repeats), label)
                                                          for text, label in toy_rows(count, seed)])
              for name, repeats, count, seed in (("train", 5, 48, 1), ("test", 3, 16, 3))}
    prepared = prepare_run(make_config(data={"train_file": str(longer["train"]), "test_file": str(longer["test"])},
                                       training={"mixed_precision": "bf16", "eval_batch_size": 64}))
    extract = partial(extract_features, prepared.model, batch_size=64, placement=prepared.placement)
    missing = {name: (None, "miss", tmp_path / f"{name}.pt") for name in prepared.tokenized}
    together = extract_missing(tmp_path, dict.fromkeys(missing, {}), missing, prepared.tokenized, extract)
    alone = extract(prepared.tokenized["test"])
    assert torch.equal(together["test"][0], alone)
