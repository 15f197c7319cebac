"""Use a finished run: score its model on any labelled file, or label new texts.

    run folder or export folder -> the model -> tokenize as training did -> batches sorted by length
        -> logits -> metrics (evaluate_file) or softmax probabilities (predict_texts, predict_file)

Everything runs on the CPU. A run folder's checkpoint (load_run, weights_only=True) runs in the precision
that the run's config asks for where the CPU does it well; an exported transformers folder (`finetune
export`) runs in float32, the precision its parity with the run is tested in; an ONNX export runs in
onnxruntime (runtime="onnx", float32).
"""

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from finetune_pipeline.core.batching import TokenizedSplit, tokenize_split
from finetune_pipeline.core.data import Example, check_labels_seen_in_train, checked_text, read_labelled_file
from finetune_pipeline.core.device import Placement, Precision, resolve_precision
from finetune_pipeline.core.evaluation import evaluate, predict_logits
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Task
from finetune_pipeline.core.readers import FileSettings, check_file, decode, read_records, source_sha256
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.artifacts import BEST_MODEL_FILE, LoadedRun, load_run
from finetune_pipeline.runtime.files import write_atomically, write_json
from finetune_pipeline.serving import hf_folder, onnx_folder
from finetune_pipeline.serving.export import EXPORT_DIR, ONNX_DIR

EVALUATIONS_DIR = "evaluations"
CPU = torch.device("cpu")  # load_run puts the model there
FLOAT32 = Precision(requested="no", used="no", reason="")  # an export's: its parity with the run is tested in it
RUNTIMES = ("torch", "onnx")
OUTPUT_SUFFIXES = (".csv", ".jsonl")

# The command-line options that name the files and columns, for messages that say what to change.
EVALUATE_SETTINGS = FileSettings(file="--data", columns={"text": "--text-column", "label": "--label-column",
                                                           "text_pair": "the run's data.text_pair_column"})
PREDICT_SETTINGS = FileSettings(file="--input", columns={"text": "--text-column", "text_pair": "the run's data.text_pair_column"})


class Classifier(Protocol):
    """A trained model ready to label texts: a TorchClassifier, or an onnx_folder.OnnxClassifier."""

    label_names: list[str]
    tokenizer: PreTrainedTokenizerBase
    max_length: int  # the run's data.max_length: texts are cut as in training
    text_column: str  # the run's data.text_column, predict_file's default column
    text_pair_column: str | None  # the run's data.text_pair_column: a pair model reads two texts
    task: Task  # what the logits mean, and how a prediction is decided
    thresholds: torch.Tensor | None  # a multi-label model's, chosen on val

    def logits(self, split: TokenizedSplit, batch_size: int) -> torch.Tensor:
        """(examples, num_labels) float32, in the split's order."""


@dataclass
class TorchClassifier:
    model: TextClassifier
    label_names: list[str]
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    text_column: str
    text_pair_column: str | None
    task: Task
    precision: Precision

    @property
    def thresholds(self) -> torch.Tensor | None:
        return self.model.head.decision_thresholds

    def logits(self, split: TokenizedSplit, batch_size: int) -> torch.Tensor:
        return predict_logits(self.model, split, batch_size, Placement(CPU, self.precision))


@dataclass
class Prediction:
    text: str
    # single-label: the most probable class; multi-label: the list of labels at or above their thresholds;
    # regression: the predicted number
    label: Any
    probabilities: dict[str, float] | None  # every label's, in the run's order (softmax; sigmoid); None: regression
    text_pair: str | None = None


def evaluate_file(
    run_dir: Path,
    data_file: Path,
    text_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
    checkpoint: str = BEST_MODEL_FILE,
) -> tuple[dict[str, Any], Path]:
    """The run's metrics on a labelled file, also written to RUN_DIR/evaluations/<name>.json. run_dir may
    also be an exported transformers folder (which then gets the evaluations/ folder)."""
    run_dir, data_file = Path(run_dir), Path(data_file)
    output = evaluation_path(run_dir, data_file.stem if name is None else name)
    run, precision, checkpoint = load_torch_model(run_dir, checkpoint)
    data = run.config.data
    kind = type(run.task)
    examples = read_labelled_file(data_file, text_column or data.text_column, label_column or data.label_column,
                                  EVALUATE_SETTINGS, text_pair_column=data.text_pair_column, task=kind,
                                  label_separator=data.label_separator)
    check_labels_seen_in_train(examples, run.label_names, "evaluation", str(data_file), kind)
    split = tokenize_split(examples, run.task.encode, run.tokenizer, data.max_length)
    # the batches of the run's own test evaluation: a CPU run's test file gives exactly its test metrics
    metrics = evaluate(run.model, split, run.task, run.config.training.eval_batch_size, Placement(CPU, precision))
    metrics.update(
        examples=len(examples),
        data_file=str(data_file.resolve()),
        data_sha256=source_sha256(str(data_file), EVALUATE_SETTINGS.role),  # as a run hashes its data, folders too
        checkpoint=checkpoint,
        task=run.task.name,
        label_names=run.label_names,
    )
    output.parent.mkdir(exist_ok=True)
    write_json(output, metrics)
    return metrics, output


def evaluation_path(run_dir: Path, name: str) -> Path:
    if name in ("", ".", "..") or any(separator in name for separator in "/\\"):
        raise UserInputError(f"--name {name!r}: must be a plain file name, without '/' or '\\'")
    return run_dir / EVALUATIONS_DIR / f"{name}.json"


def predict_texts(
    run_dir: Path, texts: list[str], batch_size: int = 32, checkpoint: str = BEST_MODEL_FILE, runtime: str = "torch",
    pairs: list[str] | None = None,
) -> list[Prediction]:
    """The run's prediction for each text (and its pair, for a model trained on text pairs), in the order given
    (run_dir: see load_classifier)."""
    check_texts(texts)
    classifier = load_classifier(Path(run_dir), checkpoint, runtime)
    check_pairs(classifier, texts, pairs)
    return predictions_for(classifier, texts, batch_size, pairs)


def predict_file(
    run_dir: Path,
    input_file: Path,
    output_file: Path,
    text_column: str | None = None,
    batch_size: int = 32,
    checkpoint: str = BEST_MODEL_FILE,
    runtime: str = "torch",
) -> int:
    """Label every text of input_file and write the predictions to output_file; returns how many."""
    input_file, output_file = Path(input_file), Path(output_file)
    if output_file.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserInputError(
            f"--output {output_file}: unsupported file type '{output_file.suffix}'; it must end in "
            f"{', '.join(OUTPUT_SUFFIXES)}"
        )
    if output_file.resolve() == input_file.resolve():
        raise UserInputError(f"--output {output_file}: is the input file; write the predictions to another file")
    classifier = load_classifier(Path(run_dir), checkpoint, runtime)
    texts, pairs = read_texts(input_file, text_column or classifier.text_column, classifier.text_pair_column)
    predictions = predictions_for(classifier, texts, batch_size, pairs)
    if output_file.suffix.lower() == ".jsonl":
        content = predictions_jsonl(predictions)
    else:
        content = predictions_csv(predictions, classifier.label_names)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output_file, lambda file: file.write(content.encode("utf-8")))
    return len(predictions)


def load_classifier(folder: Path, checkpoint: str, runtime: str) -> Classifier:
    """runtime "torch": a run folder (its checkpoint) or an exported transformers folder; "onnx": an ONNX
    export, given as its folder, an export folder holding it (onnx/) or a run folder (export/onnx/)."""
    if runtime not in RUNTIMES:
        raise UserInputError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        return onnx_folder.load_onnx_export(find_onnx_export(folder))
    run, precision, _ = load_torch_model(folder, checkpoint)
    data = run.config.data
    return TorchClassifier(run.model, run.label_names, run.tokenizer, data.max_length, data.text_column,
                           data.text_pair_column, run.task, precision)


def load_torch_model(folder: Path, checkpoint: str) -> tuple[LoadedRun, Precision, str]:
    """(the model, the precision to run it in, the run's checkpoint file it holds), from a run folder or an
    exported transformers folder; the folder's own files say which it is."""
    if hf_folder.is_hf_export(folder):
        run, exported_from = hf_folder.load_hf_export(folder)
        return run, FLOAT32, exported_from
    if onnx_folder.is_onnx_export(folder):
        raise UserInputError(f"{folder}: is an ONNX export, which `finetune predict {folder} --runtime onnx` runs; "
                             "for anything else give the run folder or its transformers export (export/hf)")
    run = load_trained_run(folder, checkpoint)
    return run, cpu_precision(run), checkpoint


def find_onnx_export(folder: Path) -> Path:
    """folder itself, its onnx/ (an export folder) or its export/onnx/ (a run folder): the first ONNX export."""
    for candidate in (folder, folder / ONNX_DIR, folder / EXPORT_DIR / ONNX_DIR):
        if onnx_folder.is_onnx_export(candidate):
            return candidate
    raise UserInputError(f"{folder}: no ONNX export there, nor in its {ONNX_DIR}/ or {EXPORT_DIR}/{ONNX_DIR}/; "
                         "write one with `finetune export RUN_DIR --format onnx`")


def load_trained_run(run_dir: Path, checkpoint: str) -> LoadedRun:
    """load_run, with a message that says why a run folder can lack its checkpoint."""
    if not run_dir.is_dir():
        raise UserInputError(f"{run_dir}: no such run folder; give one of the folders under output.artifacts_root")
    if not (run_dir / checkpoint).is_file():
        unfinished = "its first epoch" if checkpoint == BEST_MODEL_FILE else "training"
        raise UserInputError(
            f"no {checkpoint} in {run_dir}: the run did not finish {unfinished}; see its train.log and "
            "metrics.json, and give a run folder that has it"
        )
    return load_run(run_dir, checkpoint)


def cpu_precision(run: LoadedRun) -> Precision:
    """The precision the run was trained with, where the CPU does it well (see device.resolve_precision)."""
    return resolve_precision(run.config.training.mixed_precision, CPU)


def check_texts(texts: list[str]) -> None:
    if not texts:
        raise UserInputError("no texts to predict; give at least one")
    for position, text in enumerate(texts, start=1):
        if not text.strip():
            raise UserInputError(f"text {position} of {len(texts)} is empty; a text needs at least one word")


def check_pairs(classifier: Classifier, texts: list[str], pairs: list[str] | None) -> None:
    """A pair model needs a second text for each text; a one-text model takes none."""
    if classifier.text_pair_column is None:
        if pairs is not None:
            raise UserInputError("this model reads one text per example (it was trained without data.text_pair_column); "
                                 "give the texts alone, without their pairs")
        return
    if pairs is None or len(pairs) != len(texts):
        raise UserInputError(f"this model reads text pairs (data.text_pair_column '{classifier.text_pair_column}'): "
                             f"give one second text for each of the {len(texts)} text(s) (--text-pair, or the API's "
                             f"pairs=), got {0 if pairs is None else len(pairs)}")
    check_texts(pairs)


def read_texts(path: Path, text_column: str, text_pair_column: str | None = None) -> tuple[list[str], list[str] | None]:
    """Texts to label (and their pairs, for a pair model): columns of any source the training readers take (CSV,
    TSV, JSON Lines, Parquet, Excel, datasets), or each non-blank line of a UTF-8 .txt file (one text each)."""
    if path.suffix.lower() == ".txt":
        if text_pair_column is not None:
            raise UserInputError(f"{path}: a .txt file holds one text a line, and this model reads text pairs; give a "
                                 f"table with the columns '{text_column}' and '{text_pair_column}'")
        check_file(path, PREDICT_SETTINGS, (".txt",))
        content = decode(path.read_bytes(), path, "utf-8", PREDICT_SETTINGS)
        return [line.removesuffix("\r") for line in content.split("\n") if line.strip()], None
    columns = {"text": text_column} | ({"text_pair": text_pair_column} if text_pair_column else {})
    records = read_records(path, columns, PREDICT_SETTINGS)
    if not records:
        raise UserInputError(f"{path}: has a header but no rows; --input needs texts to label")
    texts = [checked_text(record, path, text_column) for record in records]
    pairs = [checked_text(record, path, text_pair_column, "text_pair") for record in records] if text_pair_column else None
    return texts, pairs


def predictions_for(classifier: Classifier, texts: list[str], batch_size: int,
                    pairs: list[str] | None = None) -> list[Prediction]:
    if batch_size < 1:
        raise UserInputError(f"--batch-size {batch_size}: must be 1 or more")
    logits = classifier.logits(tokenize_texts(classifier, texts, pairs), batch_size)
    decided = classifier.task.predictions(logits, classifier.thresholds)  # as evaluate() decides: both always agree
    return [Prediction(text=text, label=label, probabilities=probabilities, text_pair=pair)
            for text, pair, (label, probabilities) in zip(texts, pairs or [None] * len(texts), decided, strict=True)]


def tokenize_texts(classifier: Classifier, texts: list[str], pairs: list[str] | None = None) -> TokenizedSplit:
    """Token ids as training made them: the run's tokenizer, truncated to the run's data.max_length."""
    # tokenize_split also encodes each label; texts to label have none, so each carries a stand-in that nothing reads.
    examples = [Example(text=text, label="", line=position, text_pair=None if pairs is None else pairs[position - 1])
                for position, text in enumerate(texts, start=1)]
    return tokenize_split(examples, lambda label: 0, classifier.tokenizer, classifier.max_length)


def predictions_csv(predictions: list[Prediction], label_names: list[str]) -> str:
    """text (text_pair), label, then prob_<label> for every label (none for a regression: label is the number); a
    multi-label prediction's labels are joined with '|'."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    pairs = bool(predictions) and predictions[0].text_pair is not None
    scored = bool(predictions) and predictions[0].probabilities is not None
    writer.writerow(["text", *(["text_pair"] if pairs else []), "label",
                     *(f"prob_{label}" for label in label_names if scored)])
    for prediction in predictions:
        label = "|".join(prediction.label) if isinstance(prediction.label, list) else prediction.label
        writer.writerow([prediction.text, *([prediction.text_pair] if pairs else []), label,
                         *(prediction.probabilities.values() if scored else [])])
    return buffer.getvalue()


def predictions_jsonl(predictions: list[Prediction]) -> str:
    return "".join(
        json.dumps({"text": p.text, **({"text_pair": p.text_pair} if p.text_pair is not None else {}), "label": p.label,
                    **({"probabilities": p.probabilities} if p.probabilities is not None else {})},
                   ensure_ascii=False) + "\n"
        for p in predictions
    )
