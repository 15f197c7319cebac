"""model.lora: peft's LoRA adapters train, the backbone's own weights stay as they were, and the run's model
leaves the closed world merged."""

import json

import pytest
import torch

from finetune_pipeline.core.config import config_from_dict
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.preparation import dry_run
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runs.run_metrics import RunMetrics

pytest.importorskip("peft", reason="LoRA needs the peft package (a dependency of this project)")

LORA = {"training": {"freeze_backbone": False}, "model": {"lora": {"r": 4, "alpha": 8}}}


def test_lora_needs_a_trained_backbone_and_target_modules_the_backbone_has(make_config):
    with pytest.raises(UserInputError, match="set training.freeze_backbone to false"):
        config_from_dict({"model": {"lora": {}}})
    with pytest.raises(UserInputError, match="none of \\['attn'\\] is a layer of the backbone"):
        dry_run(make_config(training={"freeze_backbone": False}, model={"lora": {"target_modules": ["attn"]}}))


def test_only_the_adapters_and_the_head_train_and_the_freeze_proof_says_so(make_config):
    run_dir = run_training(make_config(**LORA))
    metrics = RunMetrics.read(run_dir / artifacts.METRICS_FILE)
    # tiny backbone: 2 layers x (query, value) x (A: 4 x 32, B: 32 x 4), and the head
    adapters = 2 * 2 * (4 * 32 + 32 * 4)
    assert metrics.parameters["backbone_trainable"] == adapters
    assert metrics.parameters["trainable"] == adapters + metrics.parameters["head"]
    proof = json.loads((run_dir / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["lora"] is True and proof["consistent_with_config"] is True
    assert proof["backbone_changed"] is False and proof["summary"]["backbone_tensors_changed"] == 0
    assert len(proof["adapter_tensors"]) == 8 and all(entry["changed"] for entry in proof["adapter_tensors"].values())
    assert "encoder.layer.0.attention.self.query.lora_A.default.weight" in proof["adapter_tensors"]
    assert "encoder.layer.0.attention.self.query.weight" in proof["backbone_tensors"]  # under its pretrained name


def test_the_adapters_and_the_head_are_saved_and_reloaded_and_export_merges_them(make_config, tmp_path):
    from finetune_pipeline.serving.export import export_run
    from finetune_pipeline.serving.inference import predict_texts

    run_dir = run_training(make_config(**LORA))
    best = torch.load(run_dir / artifacts.BEST_MODEL_FILE, weights_only=True)
    assert best["backbone_included"] is False
    saved = set(best["model_state"])
    assert saved == {name for name in saved if name.startswith("head.") or "lora_" in name}
    assert any(name.startswith("head.") for name in saved) and len(saved - {n for n in saved if "head." in n}) == 8

    loaded = artifacts.load_run(run_dir)  # the pretrained backbone, the adapters and the head, as trained
    for name, tensor in best["model_state"].items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    texts = ["good good fine", "bad awful poor", "fine"]
    unmerged = [prediction.probabilities for prediction in predict_texts(run_dir, texts)]

    folders = export_run(run_dir, "hf", "best", tmp_path / "export")
    merged_weights = (folders["hf"] / "model.safetensors").read_bytes()
    assert b"lora" not in merged_weights  # plain weights: W + alpha / r B A
    merged = [prediction.probabilities for prediction in predict_texts(folders["hf"], texts)]
    for before, after in zip(unmerged, merged, strict=True):
        assert after == pytest.approx(before, abs=1e-5)


def test_lora_on_the_top_layers_trains_from_cached_hidden_states(make_config):
    config = make_config(training={"freeze_backbone": False, "train_top_layers": 1}, model={"lora": {"r": 2}})
    run_dir = run_training(config)
    metrics = RunMetrics.read(run_dir / artifacts.METRICS_FILE)
    assert metrics.hidden_state_cache == {"train": "miss", "val": "miss", "test": "miss"}
    proof = json.loads((run_dir / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["consistent_with_config"] is True
    assert {name.split(".")[2] for name in proof["adapter_tensors"]} == {"1"}  # layer 1 only
    assert "LoRA adapters (r 2, alpha 16) on query, value of the top layers" in dry_run(config)["backbone"]


def test_a_from_run_sweep_reruns_a_lora_run_beside_one_without(make_config):
    from finetune_pipeline.core.config import apply_overrides, config_from_dict
    from finetune_pipeline.experiments.sweep import sweep_from_runs

    plain = run_training(make_config(training={"freeze_backbone": False, "epochs": 1}))
    lora = run_training(make_config(training={"freeze_backbone": False, "epochs": 1}, model={"lora": {"r": 2}}))
    for first, second, expected in ((plain, lora, {"r": 2, "alpha": 16, "dropout": 0.1,
                                                   "target_modules": ["query", "value"]}), (lora, plain, None)):
        sweep = sweep_from_runs([first, second], [8], {})
        assert sweep.members[1].overrides == {"model.lora": expected}  # one change, as --set applies it
        member = config_from_dict(apply_overrides(sweep.base_config, sweep.members[1].overrides))
        assert (None if member.model.lora is None else member.model.lora.model_dump()) == expected
