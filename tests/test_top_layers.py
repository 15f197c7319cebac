"""training.train_top_layers: the top K layers train on hidden states the frozen lower layers computed once."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_pipeline.core import hidden_state_cache
from finetune_pipeline.core.config import config_from_dict
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.preparation import dry_run
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime import run_log

TOP_ONE = {"freeze_backbone": False, "train_top_layers": 1}  # the tiny backbone has 2 layers: layer 1 trains


def metrics_of(run_dir):
    return RunMetrics.read(run_dir / artifacts.METRICS_FILE)


def step_losses(run_dir):
    return [float(event["loss"]) for event in run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")]


def test_train_top_layers_needs_a_trained_backbone_and_no_more_layers_than_the_backbone_has(make_config):
    with pytest.raises(UserInputError, match="set training.freeze_backbone to false"):
        config_from_dict({"training": {"train_top_layers": 1}})
    with pytest.raises(UserInputError, match="3 is more than the 2 layers of the backbone"):
        dry_run(make_config(training={"freeze_backbone": False, "train_top_layers": 3}))


def test_cached_and_uncached_runs_give_the_same_losses_and_scores(make_config, monkeypatch):
    # Stored as float32, the cache changes nothing but where the lower layers' output comes from; the tolerance
    # covers the different padding of extraction and training batches (float32 rounding, ~1e-7).
    monkeypatch.setattr(hidden_state_cache, "STORAGE_DTYPE", np.float32)
    cached = run_training(make_config(training=TOP_ONE))
    uncached = run_training(make_config(training={**TOP_ONE, "cache_features": False}))
    assert metrics_of(cached).hidden_state_cache == {"train": "miss", "val": "miss", "test": "miss"}
    assert metrics_of(uncached).hidden_state_cache is None
    assert step_losses(cached) == pytest.approx(step_losses(uncached), rel=1e-5, abs=1e-6)
    for key in ("best_val_score", "test_score"):
        assert getattr(metrics_of(cached), key) == pytest.approx(getattr(metrics_of(uncached), key), abs=1e-6)


def test_a_warm_rerun_runs_no_lower_layer_and_repeats_the_run(make_config, monkeypatch):
    first = run_training(make_config(training=TOP_ONE))

    def fail(*args, **kwargs):
        raise AssertionError("a lower layer ran although its output was cached")

    monkeypatch.setattr(TextClassifier, "lower_hidden_states", fail)
    monkeypatch.setattr(TextClassifier, "features", fail)  # the whole backbone: not run either
    again = run_training(make_config(training=TOP_ONE))
    assert metrics_of(again).hidden_state_cache == {"train": "hit", "val": "hit", "test": "hit"}
    assert step_losses(again) == step_losses(first)
    assert metrics_of(again).test_metrics == metrics_of(first).test_metrics


def test_a_damaged_cache_entry_is_rebuilt(make_config):
    run_training(make_config(training=TOP_ONE))
    config = make_config(training=TOP_ONE)
    for states in Path(config.output.cache_dir).glob("hidden-*/states.npy"):
        data = np.load(states, mmap_mode="r+")
        data[0, 0] += 1
        data.flush()
    again = run_training(config)
    assert set(metrics_of(again).hidden_state_cache.values()) == {"rebuilt: contents do not match their checksum"}


def test_the_freeze_proof_goes_layer_by_layer_and_checkpoints_hold_what_trained(make_config, monkeypatch):
    monkeypatch.setattr(hidden_state_cache, "STORAGE_DTYPE", np.float32)
    run_dir = run_training(make_config(training=TOP_ONE))
    proof = json.loads((run_dir / artifacts.FREEZE_PROOF_FILE).read_text())
    changed = {row["part"]: (row["trained"], row["tensors_changed"] > 0) for row in proof["layers"]}
    assert changed == {"embeddings": (False, False), "layer 0": (False, False), "layer 1": (True, True),
                       "pooler": (False, False)}
    assert proof["consistent_with_config"] is True and proof["first_trained_layer"] == 1
    assert "layer 1" in (run_dir / artifacts.REPORT_FILE).read_text()

    best = torch.load(run_dir / artifacts.BEST_MODEL_FILE, weights_only=True)
    assert best["backbone_included"] is False
    assert {name.split(".")[0] for name in best["model_state"]} == {"head", "backbone"}
    assert all(name.startswith(("head.", "backbone.encoder.layer.1.")) for name in best["model_state"])
    loaded = artifacts.load_run(run_dir)  # the whole model: pretrained lower layers, trained top layer and head
    for name, tensor in best["model_state"].items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)

    from finetune_pipeline.serving.inference import evaluate_file

    config = make_config()
    scores, _ = evaluate_file(run_dir, config.data.test_file, None, None, "again")
    assert scores["accuracy"] == pytest.approx(metrics_of(run_dir).test_metrics["accuracy"])


def test_the_dry_run_states_what_trains_and_the_cache_size(make_config):
    plan = dry_run(make_config(training=TOP_ONE))
    assert plan["backbone"].startswith("layers 1-1 of 2 trained, the embeddings and layers 0-0 frozen; the hidden "
                                       "states entering layer 1 computed once and cached in")
    assert "MiB on disk" in plan["backbone"]


def test_compare_treats_the_top_layers_and_lora_as_factors(make_config, tmp_path):
    from finetune_pipeline.experiments.compare import compare_runs

    full = run_training(make_config(training={"freeze_backbone": False}))
    top = run_training(make_config(training=TOP_ONE))
    lora = run_training(make_config(training={"freeze_backbone": False}, model={"lora": {"r": 2}}))
    rows = compare_runs([full, top, lora], tmp_path / "compare").rows
    assert rows[1].differences == {"training.train_top_layers": (None, 1)}
    assert rows[2].differences == {"model.lora": (None, {"r": 2, "alpha": 16, "dropout": 0.1,
                                                         "target_modules": ["query", "value"]})}


def test_export_rebuilds_the_whole_model_of_a_top_layers_run(make_config, tmp_path):
    from finetune_pipeline.serving.export import export_run
    from finetune_pipeline.serving.inference import predict_texts

    run_dir = run_training(make_config(training=TOP_ONE))
    texts = ["good good fine", "bad awful poor"]
    folders = export_run(run_dir, "hf", "best", tmp_path / "export")
    for ours, exported in zip(predict_texts(run_dir, texts), predict_texts(folders["hf"], texts), strict=True):
        assert exported.probabilities == pytest.approx(ours.probabilities, abs=1e-5)
