"""The training loop's invariants, on the tiny BERT: accumulation, freezing, determinism, logging."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertModel

from finetune_pipeline.core.device import resolve_precision
from finetune_pipeline.core.freeze_proof import tensor_sha256
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import files, run_log
from tests.conftest import toy_rows, write_csv


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.METRICS_FILE).read_text())


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return files.load_checkpoint(run_dir / artifacts.FINAL_MODEL_FILE)["model_state"]


@pytest.mark.parametrize("batch_size, accumulation", [(2, 4), (1, 8), (3, 3)])
def test_accumulation_matches_one_big_batch(make_config, tmp_path, batch_size, accumulation):
    """batch b x accumulation a must make the same updates as batch (a*b) x 1, including the last,
    shorter window of the epoch (10 examples: steps of 8 and 2 with an effective batch of 8)."""
    train_file = write_csv(tmp_path / "ten.csv", toy_rows(10, seed=5))
    training = {"epochs": 1, "scheduler": "constant", "warmup_ratio": 0.0, "freeze_backbone": False}

    def train_with(batch: int, steps: int) -> Path:
        return run_training(make_config(data={"train_file": str(train_file)},
                                        training={**training, "batch_size": batch, "gradient_accumulation_steps": steps}))

    reference, accumulated = train_with(8, 1), train_with(batch_size, accumulation)
    expected_equal = batch_size * accumulation == 8  # 3 x 3 = 9 is a control: another effective batch differs
    reference_state, accumulated_state = final_state(reference), final_state(accumulated)
    all_close = all(torch.allclose(reference_state[name], accumulated_state[name], atol=1e-5, rtol=1e-4)
                    for name in reference_state)
    assert all_close == expected_equal
    expected_steps = math.ceil(math.ceil(10 / batch_size) / accumulation)
    assert read_metrics(accumulated)["optimizer_steps"] == expected_steps


def test_steps_per_epoch_count_optimizer_steps_not_micro_batches(make_config):
    # 48 examples, batch 4 -> 12 micro-batches, accumulation 5 -> steps after micro-batches 5, 10 and 12
    run_dir = run_training(make_config(training={"epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 5,
                                                 "log_every_steps": 1}))
    steps = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "step")
    assert [int(event["step"]) for event in steps] == [1, 2, 3]
    assert read_metrics(run_dir)["optimizer_steps"] == 3


def test_frozen_backbone_does_not_change_and_proof_says_so(make_config):
    run_dir = run_training(make_config(training={"freeze_backbone": True, "weight_decay": 0.1}))
    proof = json.loads((run_dir / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["backbone_changed"] is False
    assert proof["consistent_with_config"] is True
    assert proof["head_changed"] is True
    assert proof["summary"]["backbone_trainable_parameters"] == 0
    assert proof["summary"]["backbone_tensors_changed"] == 0
    assert proof["summary"]["backbone_tensors_total"] == len(proof["backbone_tensors"]) > 0
    metrics = read_metrics(run_dir)
    assert metrics["parameters"]["trainable"] == metrics["parameters"]["head"]
    # independent of the run's own "before": the weights after training equal the pretrained ones on disk
    pretrained = BertModel.from_pretrained(make_config().model.backbone).state_dict()
    after = {name: entry["after_sha256"] for name, entry in proof["backbone_tensors"].items()}
    assert after == {name: tensor_sha256(tensor) for name, tensor in pretrained.items() if name in after}
    assert len(after) >= len([name for name in pretrained if "position_ids" not in name])


def test_trained_backbone_changes_and_proof_says_so(make_config):
    run_dir = run_training(make_config(training={"freeze_backbone": False}))
    proof = json.loads((run_dir / artifacts.FREEZE_PROOF_FILE).read_text())
    assert proof["backbone_changed"] is True
    assert proof["consistent_with_config"] is True
    assert proof["summary"]["backbone_max_abs_change"] > 0
    changed = [entry for entry in proof["backbone_tensors"].values() if entry["changed"]]
    assert all(entry["before_sha256"] != entry["after_sha256"] for entry in changed)


def test_same_config_and_seed_give_identical_metrics(make_config):
    first = read_metrics(run_training(make_config(training={"freeze_backbone": False, "epochs": 2})))
    second = read_metrics(run_training(make_config(training={"freeze_backbone": False, "epochs": 2})))
    for key in ("best_val_score", "best_epoch", "test_score", "val_metrics", "test_metrics"):
        assert first[key] == second[key]
    assert [epoch["train_loss"] for epoch in first["history"]] == [epoch["train_loss"] for epoch in second["history"]]


def test_different_seed_changes_the_run(make_config):
    first = read_metrics(run_training(make_config(seed=1)))
    second = read_metrics(run_training(make_config(seed=2)))
    assert first["history"][0]["train_loss"] != second["history"][0]["train_loss"]


def test_run_folder_has_every_artifact_and_complete_metrics(make_config):
    config = make_config()
    run_dir = run_training(config)
    for name in (artifacts.METRICS_FILE, artifacts.TRAIN_LOG_FILE, artifacts.FREEZE_PROOF_FILE,
                 artifacts.BEST_MODEL_FILE, artifacts.FINAL_MODEL_FILE, artifacts.HEAD_FILE, artifacts.CONFIG_FILE):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob(".*.tmp")), "temporary files left behind"
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    assert metrics["metric"] == "accuracy"
    assert metrics["best_val_score"] == max(epoch["val_score"] for epoch in metrics["history"])
    assert metrics["best_val_score"] == metrics["val_metrics"]["accuracy"]
    assert metrics["test_score"] == metrics["test_metrics"]["accuracy"]
    assert set(metrics["test_metrics"]["per_class"]) == {"neg", "pos"}
    assert sum(map(sum, metrics["test_metrics"]["confusion_matrix"])) == metrics["split_sizes"]["test"] == 16
    assert metrics["split_sizes"] == {"train": 48, "val": 16, "test": 16}
    assert metrics["label_names"] == ["neg", "pos"]
    assert len(metrics["epoch_times_s"]) == 2
    assert metrics["peak_memory_mb"]["process_rss"] > 0
    assert metrics["config_hash"] == config.fingerprint()
    assert set(metrics["versions"]) == {"python", "torch", "transformers"}
    saved_config = json.loads((run_dir / artifacts.CONFIG_FILE).read_text())
    assert saved_config == config.to_plain()


@pytest.mark.parametrize("freeze", [True, False])
def test_checkpoints_load_with_weights_only_and_rebuild_the_model(make_config, freeze):
    run_dir = run_training(make_config(training={"freeze_backbone": freeze}))
    best = torch.load(run_dir / artifacts.BEST_MODEL_FILE, weights_only=True)
    assert best["label_names"] == ["neg", "pos"]
    assert best["epoch"] == read_metrics(run_dir)["best_epoch"]
    # a frozen run's checkpoints leave the (unchanged, pretrained) backbone out
    assert best["backbone_included"] is (not freeze)
    assert any(name.startswith("backbone.") for name in best["model_state"]) is (not freeze)
    head = torch.load(run_dir / artifacts.HEAD_FILE, weights_only=True)
    loaded = artifacts.load_run(run_dir)
    assert loaded.label_names == ["neg", "pos"]
    for name, tensor in best["model_state"].items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    for name, tensor in loaded.model.head.state_dict().items():
        assert torch.equal(tensor, head[name])
    assert loaded.model.training is False
    assert loaded.metrics.best_epoch == best["epoch"]


def test_a_frozen_checkpoint_refuses_a_backbone_with_other_weights(make_config, tmp_path):
    import shutil

    backbone_copy = tmp_path / "backbone-copy"
    shutil.copytree(make_config().model.backbone, backbone_copy)
    run_dir = run_training(make_config(model={"backbone": str(backbone_copy)}))
    assert artifacts.load_run(run_dir).label_names == ["neg", "pos"]
    changed = BertModel.from_pretrained(backbone_copy)
    with torch.no_grad():
        changed.embeddings.word_embeddings.weight[5] += 0.01
    changed.save_pretrained(backbone_copy)
    with pytest.raises(artifacts.UserInputError, match="other weights"):
        artifacts.load_run(run_dir)


class NotATensor:
    pass


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "payload": NotATensor()}, path)
    with pytest.raises(artifacts.UserInputError, match="refused"):
        files.load_checkpoint(path)


def test_train_log_lines_parse_and_carry_the_promised_keys(make_config):
    run_dir = run_training(make_config(training={"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2,
                                                 "log_every_steps": 2}))
    log = run_dir / artifacts.TRAIN_LOG_FILE
    steps = run_log.read_events(log, "step")
    # 48 examples / 4 per batch / 2 per step = 6 steps per epoch; a line every 2 steps
    assert [(int(e["epoch"]), int(e["step"])) for e in steps] == [(1, 2), (1, 4), (1, 6), (2, 8), (2, 10), (2, 12)]
    for event in steps:
        for key in ("loss", "lr_head", "lr_encoder", "samples_per_s", "rss_mb"):
            assert math.isfinite(float(event[key])), key
    epochs = run_log.read_events(log, "epoch")
    assert [int(e["epoch"]) for e in epochs] == [1, 2]
    assert all(float(e["epoch_time_s"]) > 0 and 0 <= float(e["val_accuracy"]) <= 1 for e in epochs)


def test_fp16_on_cpu_never_runs_fp16_and_the_fallback_is_recorded(make_config):
    precision = resolve_precision("fp16", torch.device("cpu"))
    assert precision.used in {"bf16", "no"} and precision.reason
    assert resolve_precision("no", torch.device("cpu")).used == "no"
    run_dir = run_training(make_config(training={"mixed_precision": "fp16"}))
    recorded = read_metrics(run_dir)["mixed_precision"]
    assert recorded == {"requested": "fp16", "used": precision.used, "reason": precision.reason}
    fallback = run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "precision_fallback")
    assert len(fallback) == 1 and fallback[0]["used"] == precision.used


def test_ctrl_c_marks_the_run_interrupted_and_keeps_the_best_checkpoint(make_config, monkeypatch):
    from finetune_pipeline.core import training

    real_evaluate = training.evaluate
    calls = []

    def evaluate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate_then_interrupt)
    config = make_config(training={"epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run_training(config)
    (run_dir,) = Path(config.output.artifacts_root).iterdir()
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "interrupted"
    assert metrics["best_epoch"] == 1
    assert torch.load(run_dir / artifacts.BEST_MODEL_FILE, weights_only=True)["epoch"] == 1


def test_runs_started_in_the_same_second_get_different_folders(tmp_path):
    folders = {artifacts.create_run_dir(tmp_path) for _ in range(3)}
    assert len(folders) == 3


def test_failed_write_keeps_the_previous_file_whole(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"status": "running"})

    def write_half_then_crash(file):
        file.write(b'{"status": "compl')
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.write_atomically(target, write_half_then_crash)
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_bad_data_stops_before_anything_is_written(make_config, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    config = make_config(data={"train_file": str(empty)})
    with pytest.raises(artifacts.UserInputError, match="empty"):
        run_training(config)
    assert not Path(config.output.artifacts_root).exists()


def test_max_length_beyond_the_backbone_is_a_clear_error(make_config):
    with pytest.raises(artifacts.UserInputError, match="data.max_length"):
        run_training(make_config(data={"max_length": 512}))


def test_early_stopping_stops_after_patience_epochs_without_a_better_score(make_config):
    # a learning rate too small to move the predictions: epoch 1 is the best, and stays the best
    run_dir = run_training(make_config(training={"epochs": 6, "learning_rate": 1e-12, "scheduler": "constant",
                                                 "early_stopping_patience": 2}))
    metrics = read_metrics(run_dir)
    assert [epoch["epoch"] for epoch in metrics["history"]] == [1, 2, 3]
    assert metrics["stopped_early"] is True and metrics["best_epoch"] == 1
    assert run_log.read_events(run_dir / artifacts.TRAIN_LOG_FILE, "early_stop")[0]["patience"] == "2"


def test_macro_f1_can_be_the_score(make_config):
    metrics = read_metrics(run_training(make_config(training={"metric": "macro_f1"})))
    assert metrics["metric"] == "macro_f1"
    assert metrics["best_val_score"] == metrics["val_metrics"]["macro_f1"]
    assert metrics["test_score"] == metrics["test_metrics"]["macro_f1"]


def test_the_toy_task_is_learned_so_the_tests_above_mean_something(make_config):
    metrics = read_metrics(run_training(make_config(training={
        "freeze_backbone": False, "epochs": 8, "learning_rate": 0.05, "encoder_learning_rate": 0.005,
        "warmup_ratio": 0.0})))
    assert metrics["history"][0]["val_accuracy"] <= 0.6  # it starts at chance ...
    assert metrics["best_val_score"] >= 0.75  # ... and learns


@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_the_learning_rate_schedules_are_transformers_own(name):
    from transformers import get_scheduler

    from finetune_pipeline.core.training import learning_rate_schedule

    for warmup, total in [(0, 10), (3, 10), (83, 4152), (1, 1)]:
        ours, theirs = (torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3) for _ in range(2))
        schedules = (learning_rate_schedule(name, ours, warmup, total),
                     get_scheduler(name, theirs, num_warmup_steps=warmup, num_training_steps=total))
        for _ in range(total + 2):
            assert schedules[0].get_last_lr() == schedules[1].get_last_lr()  # the same floats, bit for bit
            for optimizer, schedule in zip((ours, theirs), schedules, strict=True):
                optimizer.step()
                schedule.step()
