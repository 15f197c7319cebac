"""finetune export: the transformers and ONNX folders load without this package and agree with predict within
1e-5 (fp32), hold no pickle, carry a model card, can be predicted and evaluated from, and refuse bad input."""

import ast
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import metadata_load

from finetune_pipeline import cli
from finetune_pipeline.core.config import DEFAULT_BACKBONE, without_machine_paths
from finetune_pipeline.errors import EXIT_BAD_INPUT, UserInputError
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runs.run import run_training
from finetune_pipeline.runtime import files
from finetune_pipeline.serving import hf_folder, onnx_folder
from finetune_pipeline.serving.export import CHECKPOINTS, FORMATS, export_run
from finetune_pipeline.serving.inference import Prediction, evaluate_file, predict_file, predict_texts
from finetune_pipeline.serving.model_card import model_card
from tests.test_inference import own_test_file, read_metrics, run_dir  # noqa: F401 (run_dir: the trained tiny run)

TOLERANCE = 1e-5  # probabilities, fp32
LONG_TEXTS = ["good " + "the movie " * 40, "awful " * 70]  # past max_length 32 and the tiny BERT's 64 positions
PARITY_TEXTS = ["good movie", "the plot was really quite bad", "fun", "boring story, sad actor!", "ünïcödé film",
                *LONG_TEXTS]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}


@pytest.fixture(scope="module")
def exported(run_dir: Path) -> dict[str, Path]:  # noqa: F811 (the imported fixture)
    return export_run(run_dir, "all")


def probabilities(predictions: list[Prediction]) -> list[dict[str, float]]:
    return [prediction.probabilities for prediction in predictions]


def largest_difference(reference: list[dict[str, float]], other: list[dict[str, float]]) -> float:
    """The largest |p - q| over every text and class (the pipeline lists the classes by score, not by id)."""
    assert [set(row) for row in reference] == [set(row) for row in other]
    return max(abs(row[label] - other_row[label]) for row, other_row in zip(reference, other, strict=True)
               for label in row)


# In a fresh interpreter where `import finetune_pipeline` fails: the folder must need nothing of this package.
WITHOUT_THIS_PACKAGE = """
import json, sys
sys.modules["finetune_pipeline"] = None
try:
    import finetune_pipeline
    raise SystemExit("finetune_pipeline was importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

folder, texts = sys.argv[1], json.loads(sys.argv[2])
classifier = pipeline("text-classification", model=folder, trust_remote_code=True, top_k=None)
through_pipeline = [{row["label"]: row["score"] for row in rows} for rows in classifier(texts, truncation=True)]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
with torch.inference_mode():
    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    output = model(**batch, labels=torch.zeros(len(texts), dtype=torch.long))
rows = output.logits.softmax(dim=-1).tolist()
through_model = [{model.config.id2label[i]: p for i, p in enumerate(row)} for row in rows]
print(json.dumps({"pipeline": through_pipeline, "model": through_model, "module": type(model).__module__,
                  "loss": output.loss.item(), "lengths": batch["attention_mask"].sum(dim=1).tolist()}))
"""


def test_transformers_loads_the_folder_without_this_package_and_agrees_with_predict(run_dir, exported, tmp_path):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", WITHOUT_THIS_PACKAGE, str(exported["hf"]), json.dumps(PARITY_TEXTS)],
                            capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules")  # the class came from the folder's own code
    assert max(loaded["lengths"]) == 32  # the long texts were cut at the run's max_length
    reference = probabilities(predict_texts(run_dir, PARITY_TEXTS))
    assert largest_difference(reference, loaded["pipeline"]) <= TOLERANCE
    assert largest_difference(reference, loaded["model"]) <= TOLERANCE
    assert loaded["loss"] > 0


def test_onnxruntime_agrees_with_predict_also_fed_by_the_tokenizers_library_alone(run_dir, exported):
    import numpy as np
    import onnx
    import onnxruntime
    from tokenizers import Tokenizer

    reference = probabilities(predict_texts(run_dir, PARITY_TEXTS))
    through_onnx = probabilities(predict_texts(run_dir, PARITY_TEXTS, runtime="onnx"))
    assert largest_difference(reference, through_onnx) <= TOLERANCE
    # the README's recipe: tokenizer.json truncates and pads by itself
    folder = exported["onnx"]
    encodings = Tokenizer.from_file(str(folder / "tokenizer.json")).encode_batch(PARITY_TEXTS)
    feed = {"input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)}
    assert feed["input_ids"].shape == (len(PARITY_TEXTS), 32)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    [logits] = session.run(["logits"], feed)
    label_names = json.loads((folder / "classifier.json").read_text())["label_names"]
    rows = torch.from_numpy(logits).softmax(dim=-1).tolist()
    assert largest_difference(reference, [dict(zip(label_names, row)) for row in rows]) <= TOLERANCE

    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [tensor.name for tensor in graph.input] == ["input_ids", "attention_mask"]
    assert [tensor.name for tensor in graph.output] == ["logits"]
    for tensor in graph.input:  # batch and sequence are named, not fixed sizes
        assert [dim.dim_param for dim in tensor.type.tensor_type.shape.dim] == ["batch", "sequence"]


def test_the_export_holds_no_pickle_and_safetensors_loads(exported):
    from safetensors import safe_open

    files = [path for folder in exported.values() for path in folder.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"config.json", "model.safetensors", "modeling_pooled_classifier.py",
                                              "README.md", "tokenizer.json", "model.onnx", "classifier.json"}
    for path in files:
        assert path.suffix not in PICKLE_SUFFIXES, path
        start = path.read_bytes()[:4]
        assert not start.startswith(b"PK\x03\x04"), path  # torch.save's zip archive
        assert not (start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path  # a pickle
    with safe_open(str(exported["hf"] / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
    assert {"head.dense.weight", "head.out_proj.bias"} <= names
    assert all(name.startswith(("encoder.", "head.")) for name in names)


def test_config_json_and_the_modeling_code(exported):
    folder = exported["hf"]
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    assert (config["pooling"], config["head_hidden_size"], config["head_dropout"]) == ("mean", 16, 0.0)
    assert config["encoder_config"]["model_type"] == "bert" and config["encoder_config"]["hidden_size"] == 32
    assert config["auto_map"] == {
        "AutoConfig": "modeling_pooled_classifier.PooledClassifierConfig",
        "AutoModelForSequenceClassification": "modeling_pooled_classifier.PooledClassifierForSequenceClassification",
    }
    assert config["finetune_pipeline"]["checkpoint"] == "best_model.pt"
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 32
    tree = ast.parse((folder / "modeling_pooled_classifier.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"torch", "transformers"}


def test_the_model_card(run_dir, exported):
    card = (exported["hf"] / "README.md").read_text(encoding="utf-8")
    front_matter = metadata_load(exported["hf"] / "README.md")
    assert front_matter["library_name"] == "transformers"
    assert front_matter["pipeline_tag"] == "text-classification"
    assert "text-classification" in front_matter["tags"]
    assert "base_model" not in front_matter  # the tiny backbone is a local folder, not a hub id
    metrics, config = read_metrics(run_dir), json.loads((run_dir / "config.json").read_text())
    # absolute paths here (tmp folders): shown by their names, where they lay on this machine is not exported
    assert "`neg`, `pos`" in card and f"`{Path(config['model']['backbone']).name}`" in card
    for split, file in metrics["data_files"].items():
        assert file["sha256"] in card and f"`{Path(file['path']).name}`" in card, split
    for split in ("val", "test"):
        scores = metrics[f"{split}_metrics"]
        assert f"| {split} | {scores['accuracy']:.4f} | {scores['macro_f1']:.4f} |" in card
        for name, row in scores["per_class"].items():
            assert (f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
                    in card)
    effective = card.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(effective) == without_machine_paths(config)
    assert "no requested, no used" in card and "device: cpu" in card
    assert datetime.date.today().isoformat() in card
    assert "cut at 32 tokens" in card and "Language:" in card


def test_the_model_card_names_a_hub_backbone_and_its_language(run_dir):
    """The default backbone is a hub id (loaded from the packaged copy, whose own card says English)."""
    run = artifacts.load_run(run_dir)
    model = run.config.model.model_copy(update={"backbone": DEFAULT_BACKBONE})
    card = model_card(dataclasses.replace(run, config=run.config.model_copy(update={"model": model})),
                      {"run_dir": run_dir.name, "checkpoint": "best_model.pt"}, run.config.to_plain())
    front_matter = card.split("---\n")[1]
    assert f"base_model: {DEFAULT_BACKBONE}" in front_matter and "language: en" in front_matter
    assert "Language: en (from the backbone's model card)" in card


def test_predict_and_evaluate_take_an_export_folder(run_dir, exported, tmp_path, capsys):
    reference = probabilities(predict_texts(run_dir, PARITY_TEXTS))
    assert largest_difference(reference, probabilities(predict_texts(exported["hf"], PARITY_TEXTS))) <= TOLERANCE
    onnx_predictions = predict_texts(exported["onnx"], PARITY_TEXTS, runtime="onnx")  # the ONNX folder itself
    assert largest_difference(reference, probabilities(onnx_predictions)) <= TOLERANCE

    hf_copy = shutil.copytree(exported["hf"], tmp_path / "hf")  # evaluate writes into the folder it scores
    metrics, written = evaluate_file(hf_copy, own_test_file(run_dir))
    expected = read_metrics(run_dir)["test_metrics"]
    assert (metrics["accuracy"], metrics["confusion_matrix"]) == (expected["accuracy"], expected["confusion_matrix"])
    assert metrics["checkpoint"] == "best_model.pt" and written == hf_copy / "evaluations" / "test.json"

    output = tmp_path / "predictions.jsonl"
    assert predict_file(run_dir, own_test_file(run_dir), output, runtime="onnx").labelled == 16  # run folder: export/onnx
    assert len(output.read_text().splitlines()) == 16
    assert cli.main(["predict", str(exported["hf"]), "--text", "good movie"]) == 0
    assert cli.main(["predict", str(run_dir), "--runtime", "onnx", "--text", "bad film"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("\tgood movie") and lines[1].endswith("\tbad film")


def test_a_frozen_run_exports_its_pretrained_backbone(make_config, tmp_path):
    """A frozen run's checkpoint holds the head alone: the export must carry the backbone's weights too."""
    frozen_run = run_training(make_config(training={"freeze_backbone": True, "cache_features": True}))
    folders = export_run(frozen_run, "hf", output=tmp_path / "out")
    reference = probabilities(predict_texts(frozen_run, PARITY_TEXTS))
    assert largest_difference(reference, probabilities(predict_texts(folders["hf"], PARITY_TEXTS))) <= TOLERANCE


def test_the_final_checkpoint(run_dir, tmp_path):
    folders = export_run(run_dir, "hf", checkpoint="final", output=tmp_path / "out")
    record = json.loads((folders["hf"] / "config.json").read_text())["finetune_pipeline"]
    assert record["checkpoint"] == "final_model.pt"
    assert "checkpoint `final_model.pt`" in (folders["hf"] / "README.md").read_text()
    final = probabilities(predict_texts(run_dir, PARITY_TEXTS, checkpoint=artifacts.FINAL_MODEL_FILE))
    assert largest_difference(final, probabilities(predict_texts(folders["hf"], PARITY_TEXTS))) <= TOLERANCE


def test_a_failed_export_leaves_the_older_one_and_a_new_one_replaces_it(run_dir, tmp_path, monkeypatch):
    root = tmp_path / "out"
    export_run(run_dir, "hf", output=root)
    marker = root / "hf" / "older-export"
    marker.write_text("")

    def fail(*args) -> None:
        raise RuntimeError("the ONNX exporter failed")

    monkeypatch.setattr(onnx_folder, "write_onnx_folder", fail)
    with pytest.raises(RuntimeError):
        export_run(run_dir, "all", output=root)  # the hf folder was complete, but nothing is replaced
    assert marker.exists() and not (root / "onnx").exists()
    assert sorted(path.name for path in root.iterdir()) == ["hf"]  # no temporary folder left behind

    export_run(run_dir, "hf", output=root)
    assert not marker.exists() and hf_folder.is_hf_export(root / "hf")
    assert sorted(path.name for path in root.iterdir()) == ["hf"]


def test_without_the_export_extra_the_commands_say_what_to_install(run_dir, exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    assert cli.main(["export", str(run_dir), "--format", "onnx", "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert 'pip install "finetune-pipeline[export]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli.main(["predict", str(exported["onnx"]), "--runtime", "onnx", "--text", "good"]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "onnxruntime" in error and 'pip install "finetune-pipeline[export]"' in error
    assert "Traceback" not in error


def not_a_completed_run(case: str, run_dir: Path, exported: dict[str, Path], folder: Path) -> Path:
    if case == "export folder":
        return exported["hf"]
    if case != "missing":
        folder.mkdir()
    if case in ("failed", "running"):  # a run whose process is gone: metrics.json says so, or still says running
        shutil.copy(run_dir / artifacts.CONFIG_FILE, folder / artifacts.CONFIG_FILE)
        files.write_json(folder / artifacts.METRICS_FILE, {**read_metrics(run_dir), "status": case})
    return folder


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such run folder"),
    ("empty", "not a run folder"),
    ("failed", "the run is failed, not completed"),
    ("running", "the run is crashed, not completed"),
    ("export folder", "not a run folder"),
])
def test_export_refuses_what_is_not_a_completed_run(run_dir, exported, tmp_path, capsys, case, expected):
    folder = not_a_completed_run(case, run_dir, exported, tmp_path / "run")
    assert cli.main(["export", str(folder), "--output", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert expected in error and str(folder) in error and "Traceback" not in error
    assert not (tmp_path / "out" / "hf").exists()


@pytest.mark.parametrize("option", [["--format", "safetensors"], ["--checkpoint", "last"]])
def test_unknown_format_or_checkpoint_is_a_usage_error(run_dir, capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(run_dir), *option])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "invalid choice" in capsys.readouterr().err


def test_the_command_line_offers_what_the_library_accepts(run_dir):
    parser = cli.build_parser()
    for export_format in FORMATS:
        assert parser.parse_args(["export", "RUN_DIR", "--format", export_format]).export_format == export_format
    for checkpoint in CHECKPOINTS:
        assert parser.parse_args(["export", "RUN_DIR", "--checkpoint", checkpoint]).checkpoint == checkpoint
    with pytest.raises(UserInputError, match="export format 'tar'"):
        export_run(run_dir, "tar")


def test_predict_names_the_runtime_an_export_folder_needs(run_dir, exported, tmp_path, capsys):
    assert cli.main(["predict", str(exported["onnx"]), "--text", "good"]) == EXIT_BAD_INPUT
    assert "--runtime onnx" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--runtime", "onnx", "--text", "good"]) == EXIT_BAD_INPUT
    assert "finetune export RUN_DIR --format onnx" in capsys.readouterr().err


TEXT_SUFFIXES = (".json", ".md", ".py", ".txt")


def test_a_killed_exports_leftovers_are_removed_by_the_next_and_no_machine_path_is_exported(run_dir, tmp_path,
                                                                                             tiny_backbone_dir):
    root = tmp_path / "out"
    root.mkdir()
    leftover = root / ".hf.1a2b3c4d.tmp"  # what a kill -9 during an export leaves
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    folders = export_run(run_dir, "hf", output=root)
    assert sorted(path.name for path in root.iterdir()) == ["hf"]
    encoder_config = json.loads((folders["hf"] / "config.json").read_text())["encoder_config"]
    assert encoder_config.get("_name_or_path", "") == ""  # where the backbone was read from on this machine
    # the run's data, backbone and output folders are absolute paths here: no exported file names them
    plain = json.loads((run_dir / "config.json").read_text())
    machine_paths = [plain["model"]["backbone"], *(plain["data"][f"{split}_file"] for split in ("train", "val", "test")),
                     plain["output"]["cache_dir"], plain["output"]["artifacts_root"], str(tiny_backbone_dir)]
    assert all(Path(path).is_absolute() for path in machine_paths)
    folders |= export_run(run_dir, "onnx", output=root)
    for path in [path for folder in folders.values() for path in folder.rglob("*") if path.suffix in TEXT_SUFFIXES]:
        text = path.read_text(encoding="utf-8")
        assert not [machine for machine in machine_paths if machine in text], path
    assert json.loads((folders["hf"] / "config.json").read_text())["finetune_pipeline"]["config"]["data"][
        "train_file"] == Path(plain["data"]["train_file"]).name


def test_each_export_states_its_own_score_measured_through_it(run_dir, exported):
    recorded = read_metrics(run_dir)
    card = (exported["hf"] / "README.md").read_text(encoding="utf-8")
    measured_section = card[card.index("## Measured through this export"):]
    assert "scored through this folder's own files (transformers, float32 on the CPU): accuracy " in measured_section
    assert f"accuracy {recorded['test_score']:.4f}. The run recorded accuracy {recorded['test_score']:.4f}" \
        in measured_section  # fp32 on a tiny model: the same examples right
    info = json.loads((exported["onnx"] / "classifier.json").read_text())
    assert info["measured_through_export"] == {"test_examples": recorded["split_sizes"]["test"],
                                               "accuracy": pytest.approx(recorded["test_score"])}


def test_the_int8_export_is_smaller_predicts_and_states_both_scores(run_dir, exported, capsys):
    int8, fp32 = exported["onnx-int8"], exported["onnx"]
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size  # the tiny BERT: graph-bound
    info = json.loads((int8 / "classifier.json").read_text())
    assert info["quantization"].startswith("int8")
    test_examples = read_metrics(run_dir)["split_sizes"]["test"]
    fp32_info = json.loads((fp32 / "classifier.json").read_text())
    assert info["measured_before_quantization"] == fp32_info["measured_through_export"]  # the same float32 graph
    assert info["measured_through_export"]["test_examples"] == test_examples
    labels = [prediction.label for prediction in predict_texts(int8, PARITY_TEXTS, runtime="onnx")]
    assert set(labels) <= {"neg", "pos"} and len(labels) == len(PARITY_TEXTS)
    assert cli.main(["predict", str(int8), "--runtime", "onnx", "--text", "good movie"]) == 0
    assert cli.main(["export", str(run_dir), "--format", "onnx-int8", "--output", str(int8.parent / "again")]) == 0
    assert "onnx-int8: " in capsys.readouterr().out
