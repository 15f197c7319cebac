"""The task types beyond single-label: multi-label (a set of labels per text, thresholds chosen on val), regression
(a number per text, standardised on train) and text pairs, through reading, training in every mode, resume,
evaluate, predict, compare, the report, the API and both exports."""

import json
import random
from pathlib import Path

import pytest
import torch

from finetune_pipeline import cli
from finetune_pipeline.core.data import read_labelled_file, split_settings
from finetune_pipeline.core.task import DEFAULT_THRESHOLD, MultiLabelClassification, Regression
from finetune_pipeline.errors import EXIT_BAD_INPUT, UserInputError
from finetune_pipeline.experiments.compare import compare_runs
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.preparation import dry_run
from finetune_pipeline.runs.run import resume_training, run_training
from finetune_pipeline.runtime import faults, files
from finetune_pipeline.runtime.interruption import Interrupted
from finetune_pipeline.serving.export import export_run
from finetune_pipeline.serving.inference import evaluate_file, predict_file, predict_texts
from tests.conftest import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS, deep_merge

FROZEN = {"freeze_backbone": True}
FULL = {"freeze_backbone": False}
TOP_LAYER = {"freeze_backbone": False, "train_top_layers": 1}  # on cached hidden states
MODES = [FROZEN, FULL, TOP_LAYER]
MODE_IDS = ["frozen-cached", "full", "top-layer-cached"]


def emotion_rows(count: int, seed: int) -> list[dict]:
    """Texts with a positive word, a negative word, both or neither; labels: the set of what they hold."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        has_positive, has_negative = rng.random() < 0.5, rng.random() < 0.4
        words = rng.sample(FILLER_WORDS, 3) + [rng.choice(POSITIVE_WORDS)] * has_positive \
            + [rng.choice(NEGATIVE_WORDS)] * has_negative
        rng.shuffle(words)
        labels = ["pos"] * has_positive + ["neg"] * has_negative or ["none"]
        # a score and a second text, for the regression-on-pairs cases
        score = round(2.5 + 2 * has_positive - 2 * has_negative + rng.random(), 3)
        rows.append({"text": " ".join(words), "labels": labels, "score": score,
                     "other": " ".join(rng.sample(FILLER_WORDS, 2) + [rng.choice(POSITIVE_WORDS + NEGATIVE_WORDS)])})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def task_files(tmp_path: Path) -> dict[str, str]:
    return {f"{split}_file": write_jsonl(tmp_path / f"{split}.jsonl", emotion_rows(count, seed))
            for split, count, seed in (("train", 64, 1), ("val", 24, 2), ("test", 24, 3))}


@pytest.fixture
def multi_label(make_config, task_files):
    def build(training: dict | None = None, data: dict | None = None, **sections) -> object:
        return make_config(task="multi_label", data={**task_files, "label_column": "labels", **(data or {})},
                           training={"log_every_steps": 1, **(training or {})}, **sections)
    return build


@pytest.fixture
def regression(make_config, task_files):
    def build(training: dict | None = None, data: dict | None = None, **sections) -> object:
        return make_config(task="regression",
                           data={**task_files, "label_column": "score", "text_pair_column": "other", **(data or {})},
                           training={"log_every_steps": 1, **(training or {})}, **sections)
    return build


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / artifacts.METRICS_FILE).read_text())


# ---- reading labels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "separator", "expected"), [
    ('text,labels\nfun film,"[""joy"", ""love""]"\nsad,"[""grief""]"\n', None, [("joy", "love"), ("grief",)]),
    ("text,labels\nfun film,\"[3, 15]\"\nsad,[7]\n", None, [("3", "15"), ("7",)]),  # pandas' written list column
    ("text,labels\nfun film,joy|love\nsad,grief\n", "|", [("joy", "love"), ("grief",)]),
    ("text,labels\nfun film,love\n", None, [("love",)]),  # one label without a separator
])
def test_multi_label_cells_hold_lists_or_separated_labels(tmp_path, content, separator, expected):
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")
    examples = read_labelled_file(path, "text", "labels", split_settings("train"), task=MultiLabelClassification,
                                  label_separator=separator)
    assert [example.label for example in examples] == expected


def test_an_empty_label_set_names_the_row(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [{"text": "fine", "labels": ["joy"]}, {"text": "nothing", "labels": []}])
    with pytest.raises(UserInputError, match=r"line 2, column 'labels': an empty set of labels"):
        read_labelled_file(path, "text", "labels", split_settings("train"), task=MultiLabelClassification)


def test_a_regression_target_that_is_no_number_names_the_row_and_value(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,score\ngood,4.5\nbad,high\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"line 3, column 'score': the regression target \"high\" is not a number"):
        read_labelled_file(path, "text", "score", split_settings("train"), task=Regression)


def write_config(tmp_path: Path, make_config, change: dict) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(deep_merge(make_config().to_plain(), change)))
    return path


@pytest.mark.parametrize(("change", "expected"), [
    ({"data": {"label_column": "labels"}}, ['"task": "multi_label"', "is a list"]),
    ({"data": {"label_column": "score"}}, ['"task": "regression"', "distinct numbers"]),
    ({"task": "regression", "data": {"label_column": "labels"}, "training": {"metric": "rmse"}}, ["is not a number"]),
    ({"task": "multi_label", "data": {"label_column": "labels", "text_pair_column": "missing_column"},
      "training": {"metric": "macro_f1"}}, ["missing_column", "data.text_pair_column"]),
    ({"task": "regression", "training": {"metric": "accuracy"}}, ["training.metric", "rmse, mae, pearson, spearman"]),
    ({"task": "regression", "training": {"class_weights": "balanced"}}, ["training.class_weights", "regression"]),
    ({"data": {"label_separator": "|"}}, ["data.label_separator", '"task" to "multi_label"']),
])
def test_the_wrong_task_for_the_labels_exits_2_with_the_way_out(make_config, task_files, tmp_path, capsys, change,
                                                                 expected):
    config_path = write_config(tmp_path, make_config, deep_merge({"data": task_files}, change))
    assert cli.main(["train", "--config", str(config_path)]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "Traceback" not in error
    for fragment in expected:
        assert fragment in error, (fragment, error)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


def test_an_unknown_label_in_val_is_refused(multi_label, tmp_path):
    write_jsonl(tmp_path / "val.jsonl", [{"text": "good film", "labels": ["pos", "joy"]}])
    with pytest.raises(UserInputError, match=r"val label 'joy' never occurs in the train split"):
        dry_run(multi_label())


def test_each_task_defaults_to_its_own_metric(make_config):
    assert make_config(task="multi_label").training.metric == "macro_f1"
    assert make_config(task="regression").training.metric == "rmse"
    assert make_config(task="regression", training={"metric": "spearman"}).training.metric == "spearman"


# ---- thresholds and scaling ---------------------------------------------------------------------------------------


def test_thresholds_are_the_f1_best_per_label_and_a_label_without_positives_keeps_one_half():
    task = MultiLabelClassification(["a", "b", "c"], "macro_f1")
    # label a: positives score 0.3-0.4, negatives below 0.2 -> the F1-best threshold is above 0.2, at most 0.3
    logits = torch.logit(torch.tensor([[0.3, 0.9, 0.1], [0.4, 0.2, 0.1], [0.1, 0.8, 0.2], [0.15, 0.1, 0.3]]))
    targets = [[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]]
    thresholds = task.fit_decision(logits, targets).tolist()
    assert 0.15 < thresholds[0] <= 0.3 and 0.2 < thresholds[1] <= 0.8
    assert thresholds[2] == DEFAULT_THRESHOLD
    assert task.metrics(logits, targets, torch.tensor(thresholds))["per_class"]["a"]["f1"] == 1.0


def test_a_regression_target_is_standardised_on_train_and_predicted_in_its_units():
    task = Regression(["score"], "rmse", target_mean=3.0, target_std=2.0)
    targets = torch.tensor([5.0, 1.0])
    assert task.loss_sum(torch.tensor([[1.0], [-1.0]]), targets).item() == 0.0  # (5 - 3) / 2 = 1, (1 - 3) / 2 = -1
    assert task.decide(torch.tensor([[0.5]])).tolist() == [4.0]
    assert task.is_better(0.5, 0.6) and not task.is_better(0.7, 0.6)  # rmse: lower is better


# ---- training in every mode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_multi_label_trains_in_every_mode_and_keeps_the_best_epochs_thresholds(multi_label, mode, tmp_path):
    run_dir = run_training(multi_label(training=mode))
    metrics = metrics_of(run_dir)
    assert metrics["status"] == "completed" and metrics["task"]["type"] == "multi_label"
    assert metrics["metric"] == "macro_f1" and metrics["best_val_score"] == metrics["val_metrics"]["macro_f1"]
    assert set(metrics["test_metrics"]) >= {"micro_f1", "macro_f1", "subset_accuracy", "per_class"}
    carried = [label for row in emotion_rows(64, 1) for label in row["labels"]]
    assert metrics["label_distribution"]["train"] == {name: carried.count(name) for name in ("neg", "none", "pos")}
    chosen = {name: entry["threshold"] for name, entry in metrics["val_metrics"]["per_class"].items()}
    # once calibrated (a temperature per label), each threshold is where the same logit lands on the new scale
    temperature = torch.tensor(metrics["calibration"]["temperature"], dtype=torch.float64)
    mapped = (torch.logit(torch.tensor(list(chosen.values()), dtype=torch.float64)) / temperature).sigmoid()
    saved = files.load_checkpoint(run_dir / artifacts.BEST_MODEL_FILE)
    assert saved["model_state"]["head.thresholds"].tolist() == pytest.approx(mapped.tolist())
    assert saved["model_state"]["head.temperature"].tolist() == pytest.approx(temperature.tolist())
    assert [entry["threshold"] for entry in metrics["test_metrics"]["per_class"].values()] == pytest.approx(
        mapped.tolist())
    # the calibrated model decides as the uncalibrated one did: val gives the best epoch's score again; evaluate on
    # the test file gives the run's own test metrics; predict decides with the same thresholds
    data = multi_label().data
    assert evaluate_file(run_dir, Path(data.val_file))[0]["macro_f1"] == metrics["best_val_score"]
    evaluated, _ = evaluate_file(run_dir, Path(data.test_file))
    assert evaluated["macro_f1"] == pytest.approx(metrics["test_metrics"]["macro_f1"])
    [prediction] = predict_texts(run_dir, ["good movie"])
    thresholds = dict(zip(chosen, mapped.tolist(), strict=True))
    assert prediction.label == [name for name, p in prediction.probabilities.items() if p >= thresholds[name]]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_regression_on_text_pairs_trains_in_every_mode(regression, mode):
    run_dir = run_training(regression(training=mode))
    metrics = metrics_of(run_dir)
    assert metrics["status"] == "completed" and metrics["metric"] == "rmse"
    scores = [epoch["val_rmse"] for epoch in metrics["history"]]
    assert metrics["best_val_score"] == min(scores) and metrics["best_epoch"] == scores.index(min(scores)) + 1
    train_scores = [row["score"] for row in emotion_rows(64, 1)]
    mean = sum(train_scores) / len(train_scores)
    assert metrics["task"]["target_mean"] == pytest.approx(mean)
    evaluated, _ = evaluate_file(run_dir, Path(regression().data.test_file))
    assert evaluated["rmse"] == pytest.approx(metrics["test_metrics"]["rmse"])
    [prediction] = predict_texts(run_dir, ["good movie"], pairs=["the fun plot"])
    assert isinstance(prediction.label, float) and prediction.probabilities is None
    with pytest.raises(UserInputError, match="reads text pairs"):
        predict_texts(run_dir, ["good movie"])


def test_pairs_are_tokenized_together_and_keyed_apart_in_the_cache(regression, tmp_path):
    plan = dry_run(regression())
    single = dry_run(regression(data={"text_pair_column": None}))
    assert plan["token_lengths"]["train"]["mean"] > single["token_lengths"]["train"]["mean"] + 3  # the pair and [SEP]
    pairs_run, single_run = run_training(regression(training=FROZEN)), run_training(
        regression(training=FROZEN, data={"text_pair_column": None}))
    assert metrics_of(pairs_run)["feature_cache"]["train"] == metrics_of(single_run)["feature_cache"]["train"] == "miss"


@pytest.mark.parametrize("build", ["multi_label", "regression"])
def test_an_interrupted_run_of_each_task_resumes_bit_for_bit(request, monkeypatch, build):
    config = request.getfixturevalue(build)(training={**FULL, "epochs": 2})
    reference = metrics_of(run_training(config))
    faults._passes.clear()
    monkeypatch.setenv(faults.FAULT_VARIABLE, "step:5:SIGINT")
    with pytest.raises(Interrupted):
        run_training(config)
    monkeypatch.delenv(faults.FAULT_VARIABLE)
    stopped = max(Path(config.output.artifacts_root).iterdir(), key=lambda path: path.name)
    resumed = metrics_of(resume_training(stopped))
    for key in ("best_val_score", "test_score", "val_metrics", "test_metrics", "optimizer_steps"):
        assert resumed[key] == reference[key], key


# ---- compare, report, predict files, the API, exports ----------------------------------------------------------


def test_compare_knows_lower_is_better_and_that_regression_has_no_step_per_example(regression, tmp_path):
    runs = [run_training(regression(training=FROZEN, seed=seed)) for seed in (7, 8)]
    runs += [run_training(regression(training={**FROZEN, "learning_rate": 0.001}, seed=seed)) for seed in (7, 8)]
    comparison = compare_runs(runs, tmp_path / "compare")
    assert comparison.resolution[0].startswith("val: 24 texts, no step per example: rmse is continuous")
    assert comparison.resolution[-1] == "scores are rmse: lower is better"
    notes = [note for note in comparison.notes if "vs the reference" in note]
    assert notes and ("(better: lower rmse is better)" in notes[0] or "(worse: lower rmse is better)" in notes[0])
    assert "below resolution" not in " ".join(notes)
    report = (runs[0] / artifacts.REPORT_FILE).read_text()
    assert "standardised with the train split" in report and "Confusion matrix" not in report
    assert "predicted vs true and residuals" in report
    assert len(metrics_of(runs[0])["test_metrics"]["points"]["true"]) == 24  # every test example: fewer than kept


def test_multi_label_report_and_prediction_file_show_labels_and_thresholds(multi_label, tmp_path, capsys):
    run_dir = run_training(multi_label(training=FROZEN))
    assert cli.main(["evaluate", str(run_dir), "--data", multi_label().data.test_file]) == 0
    assert "24 examples; macro_f1 " in capsys.readouterr().out
    assert cli.main(["predict", str(run_dir), "--text", "good movie"]) == 0
    assert "\tgood movie" in capsys.readouterr().out
    report = (run_dir / artifacts.REPORT_FILE).read_text()
    assert "Per label" in report and "threshold" in report
    output = tmp_path / "predictions.jsonl"
    assert predict_file(run_dir, Path(multi_label().data.test_file), output).labelled == 24
    first = json.loads(output.read_text().splitlines()[0])
    assert isinstance(first["label"], list) and set(first["probabilities"]) == {"neg", "none", "pos"}


def test_the_api_trains_each_task_from_dataframes(make_config, tmp_path):
    pandas = pytest.importorskip("pandas")
    import finetune_pipeline as ft

    frames = {split: pandas.DataFrame(emotion_rows(count, seed)) for split, count, seed in
              (("train", 48, 1), ("val", 16, 2), ("test", 16, 3))}
    base = make_config(training={"epochs": 1}).to_plain()
    multi = ft.train(deep_merge(base, {"task": "multi_label", "training": {"metric": "macro_f1"}}),
                     label_column="labels", **frames)
    assert multi.metrics["task"]["type"] == "multi_label"
    assert isinstance(multi.predict(["good movie"]).loc[0, "label"], list)
    pairs = ft.train(deep_merge(base, {"task": "regression", "data": {"text_pair_column": "other"},
                                       "training": {"metric": "rmse"}}), label_column="score", **frames)
    predicted = pairs.predict(["good movie", "bad plot"], pairs=["fun film", "sad story"])
    assert list(predicted.columns) == ["text", "text_pair", "label"]
    assert pairs.evaluate(frames["test"])["rmse"] == pytest.approx(pairs.metrics["test_metrics"]["rmse"])


@pytest.mark.parametrize("build", ["multi_label", "regression"])
def test_both_exports_agree_with_predict_for_each_task(request, build):
    pytest.importorskip("onnxruntime")
    run_dir = run_training(request.getfixturevalue(build)(training={**FULL, "epochs": 1}))
    folders = export_run(run_dir, "all")
    texts, pairs = ["good movie", "the plot was bad", "fun but sad"], None
    if build == "regression":
        pairs = ["great film", "awful", "boring story"]
    reference = predict_texts(run_dir, texts, pairs=pairs)
    for exported in (predict_texts(folders["hf"], texts, pairs=pairs),
                     predict_texts(run_dir, texts, pairs=pairs, runtime="onnx")):
        for expected, got in zip(reference, exported, strict=True):
            assert got.label == pytest.approx(expected.label, abs=1e-4) if build == "regression" else \
                got.label == expected.label
    config = json.loads((folders["hf"] / "config.json").read_text())
    assert config["problem_type"] == {"multi_label": "multi_label_classification", "regression": "regression"}[build]
    if build == "multi_label":
        assert len(config["label_thresholds"]) == 3
    else:
        assert config["target_std"] > 0


PIPELINE_AS_THE_CARD_SAYS = """
import json, sys
sys.modules["finetune_pipeline"] = None  # the folder must need nothing of this package
from transformers import pipeline

folder, task, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if task == "regression":
    classifier = pipeline("text-classification", model=folder, trust_remote_code=True, function_to_apply="none")
    print(json.dumps([row["score"] for row in classifier(inputs, truncation=True)]))
else:
    classifier = pipeline("text-classification", model=folder, trust_remote_code=True, top_k=None)
    thresholds = dict(zip(classifier.model.config.id2label.values(), classifier.model.config.label_thresholds))
    print(json.dumps([sorted(row["label"] for row in rows if row["score"] >= thresholds[row["label"]])
                      for rows in classifier(inputs, truncation=True)]))
"""


@pytest.mark.parametrize("build", ["multi_label", "regression"])
def test_transformers_pipeline_called_as_the_model_card_says_agrees_with_predict(request, build, tmp_path):
    import os
    import subprocess
    import sys

    run_dir = run_training(request.getfixturevalue(build)(training={**FROZEN, "epochs": 1}))
    folder = export_run(run_dir, "hf")["hf"]
    texts, pairs = ["good movie", "the plot was bad", "fun but sad"], ["great film", "awful", "boring story"]
    if build == "regression":
        inputs = [{"text": text, "text_pair": pair} for text, pair in zip(texts, pairs, strict=True)]
        expected = [prediction.label for prediction in predict_texts(run_dir, texts, pairs=pairs)]
    else:
        inputs, expected = texts, [prediction.label for prediction in predict_texts(run_dir, texts)]
    card = (folder / "README.md").read_text()
    assert ("function_to_apply" in card) == (build == "regression") and ("label_thresholds" in card) == (build != "regression")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", PIPELINE_AS_THE_CARD_SAYS, str(folder), build, json.dumps(inputs)],
                            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    through_pipeline = json.loads(result.stdout.strip().splitlines()[-1])
    if build == "regression":
        assert through_pipeline == pytest.approx(expected, abs=1e-4)
    else:
        assert through_pipeline == [sorted(labels) for labels in expected]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
@pytest.mark.parametrize(("build", "training"), [("multi_label", TOP_LAYER), ("regression", FULL)],
                         ids=["multi-label-top-layer", "regression-pairs-full"])
def test_two_processes_train_each_task_as_one_does(request, tmp_path, build, training):
    from tests.test_distributed import train

    base = request.getfixturevalue(build)(training={**training, "epochs": 2}).to_plain()
    single = train(deep_merge(base, {"training": {"batch_size": 4, "gradient_accumulation_steps": 2}}), tmp_path, 1)
    double = train(deep_merge(base, {"training": {"batch_size": 2, "gradient_accumulation_steps": 2}}), tmp_path, 2)
    one, two = metrics_of(single), metrics_of(double)
    assert two["processes"] == 2 and two["optimizer_steps"] == one["optimizer_steps"]
    for epoch_one, epoch_two in zip(one["history"], two["history"], strict=True):
        assert epoch_two["train_loss"] == pytest.approx(epoch_one["train_loss"], rel=1e-5)
    # every example scored once; for multi-label the same thresholds were chosen in both
    if build == "regression":
        for metric in ("rmse", "mae", "pearson", "spearman"):
            assert two["test_metrics"][metric] == pytest.approx(one["test_metrics"][metric], rel=1e-4)
    else:  # the thresholds, mapped by temperatures fitted on logits that differ by float noise, approximately
        def without_thresholds(per_class: dict) -> dict:
            return {name: {key: value for key, value in row.items() if key != "threshold"}
                    for name, row in per_class.items()}

        assert without_thresholds(two["test_metrics"]["per_class"]) == without_thresholds(
            one["test_metrics"]["per_class"])
        assert [row["threshold"] for row in two["test_metrics"]["per_class"].values()] == pytest.approx(
            [row["threshold"] for row in one["test_metrics"]["per_class"].values()], rel=1e-3)
