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
from typing import Any, NamedTuple, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from finetune_pipeline.core.batching import InputSplit, TokenizedSplit, tokenize_split
from finetune_pipeline.core.config import check_delimiter, check_encoding
from finetune_pipeline.core.data import (
    Example,
    check_labels_seen_in_train,
    read_labelled_file,
    reading_of_file,
    rows_sha256,
)
from finetune_pipeline.core.device import Placement, Precision, resolve_precision
from finetune_pipeline.core.evaluation import evaluate, predict_logits
from finetune_pipeline.core.model import TextClassifier
from finetune_pipeline.core.task import Task
from finetune_pipeline.core.training_mode import Cached, TrainingMode
from finetune_pipeline.core.readers import FileSettings, Record, check_file, decode, read_records, source_sha256
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.artifacts import BEST_MODEL_FILE, EXPORT_DIR, ONNX_DIR, LoadedRun, load_run
from finetune_pipeline.runs.run_inputs import mode_inputs
from finetune_pipeline.runs.run_record import read_run_files
from finetune_pipeline.runtime.files import write_atomically, write_json
from finetune_pipeline.serving import hf_folder, onnx_folder

EVALUATIONS_DIR = "evaluations"
CPU = torch.device("cpu")  # load_run puts the model there
FLOAT32 = Precision(requested="no", used="no", reason="")  # an export's: its parity with the run is tested in it
RUNTIMES = ("torch", "onnx")
OUTPUT_SUFFIXES = (".csv", ".jsonl")

# The command-line options that name the files and columns, for messages that say what to change.
EVALUATE_SETTINGS = FileSettings(file="--data", columns={"text": "--text-column", "label": "--label-column",
                                                           "text_pair": "the run's data.text_pair_column"},
                                 delimiter="--delimiter", encoding="--encoding")
PREDICT_SETTINGS = FileSettings(file="--input", columns={"text": "--text-column",
                                                         "text_pair": "the run's data.text_pair_column"},
                                delimiter="--delimiter", encoding="--encoding")


class Classifier(Protocol):
    """A trained model ready to label texts: a TorchClassifier, or an onnx_folder.OnnxClassifier."""

    label_names: list[str]
    tokenizer: PreTrainedTokenizerBase
    max_length: int  # the run's data.max_length: texts are cut as in training
    text_column: str  # the run's data.text_column, predict_file's default column
    text_pair_column: str | None  # the run's data.text_pair_column: a pair model reads two texts
    delimiter: str | None  # the run's data.delimiter and data.encoding: predict_file's defaults
    encoding: str
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
    delimiter: str | None
    encoding: str
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
    delimiter: str | None = None,
    encoding: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """The run's metrics on a labelled file, also written to RUN_DIR/evaluations/<name>.json. run_dir may
    also be an exported transformers folder (which then gets the evaluations/ folder). Columns, delimiter and
    encoding not given are those the run read the file with (one of its own split files), else its data.* ones."""
    run_dir, data_file = Path(run_dir), Path(data_file)
    delimiter, encoding = checked_format(delimiter, encoding)
    output = evaluation_path(run_dir, data_file.stem if name is None else name)
    run, precision, checkpoint = load_torch_model(run_dir, checkpoint)
    data = run.config.data
    reading = reading_of_file(data, data_file)
    kind = type(run.task)
    examples = read_labelled_file(data_file, text_column or reading.text_column, label_column or reading.label_column,
                                  EVALUATE_SETTINGS, delimiter or reading.delimiter, encoding or reading.encoding,
                                  text_pair_column=reading.text_pair_column, task=kind,
                                  label_separator=data.label_separator)
    check_labels_seen_in_train(examples, run.label_names, "evaluation", str(data_file), kind)
    split = tokenize_split(examples, run.task.encode, run.tokenizer, data.max_length)
    placement = Placement(CPU, precision)
    inputs, read_as = as_the_run_read(run, split, placement)
    metrics = evaluate(run.model, inputs, run.task, run.config.training.eval_batch_size, placement)
    metrics.update(
        examples=len(examples),
        inputs=read_as,
        data_file=str(data_file.resolve()),
        data_sha256=source_sha256(str(data_file), EVALUATE_SETTINGS.role),  # as a run hashes its data, folders too
        data_rows_sha256=rows_sha256(examples),  # the run's own test rows give its data_files.test.rows_sha256
        checkpoint=checkpoint,
        task=run.task.name,
        label_names=run.label_names,
    )
    output.parent.mkdir(exist_ok=True)
    write_json(output, metrics)
    return metrics, output


def checked_format(delimiter: str | None, encoding: str | None) -> tuple[str | None, str | None]:
    """--delimiter and --encoding as the config checks data.delimiter and data.encoding."""
    checked = []
    for option, value, check in (("--delimiter", delimiter, check_delimiter), ("--encoding", encoding, check_encoding)):
        try:
            checked.append(check(value))
        except ValueError as error:
            raise UserInputError(f"{option} {value!r}: {error}") from None
    return checked[0], checked[1]


def score_examples(classifier: Classifier, examples: list[Example], batch_size: int) -> dict[str, Any]:
    """The task's metrics of a classifier (a run's model, or an export through its own runtime) on examples."""
    split = tokenize_split(examples, classifier.task.encode, classifier.tokenizer, classifier.max_length)
    return classifier.task.metrics(classifier.logits(split, batch_size), split.labels, classifier.thresholds)


def as_the_run_read(run: LoadedRun, split: TokenizedSplit, placement: Placement) -> tuple[InputSplit, str]:
    """The file as the run's training loop read its own splits, and which way that was: a frozen run scored the
    head on its feature cache's backbone features, a train_top_layers run the top layers on cached hidden states
    (float16). Read (or computed split by split and cached) the same way here, the run's own split files give
    exactly the run's metrics. An export does not know its backbone's fingerprint: the model runs on the file."""
    backbone_sha256, mode = run.metrics.backbone_sha256, TrainingMode.of(run.config)
    if mode.cached is Cached.NOTHING or backbone_sha256 is None:
        return split, "the model on the file"
    mode = mode.with_layers(run.model.backbone.config)
    (inputs, status), = mode_inputs(mode, run.model, run.config, placement, backbone_sha256,
                                    {"evaluation": split}).values()
    cached = "backbone features" if mode.caches_features else f"hidden states entering layer {mode.first_trained_layer}"
    return inputs, f"the run's {cached} of the file (cache: {status}), as the run scored its splits"


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


class PredictedFile(NamedTuple):
    labelled: int  # rows that got a prediction
    unlabelled: list[int]  # the lines of rows with an empty text: written back with empty prediction columns


def predict_file(
    run_dir: Path,
    input_file: Path,
    output_file: Path,
    text_column: str | None = None,
    batch_size: int = 32,
    checkpoint: str = BEST_MODEL_FILE,
    runtime: str = "torch",
    delimiter: str | None = None,
    encoding: str | None = None,
) -> PredictedFile:
    """Label every text of input_file and write output_file: every input row in its order, with all its columns,
    followed by the prediction's (label, prob_<label>; see output_rows). A row with an empty text is
    written unlabelled rather than stopping the file. The column, delimiter and encoding not given are the run's."""
    input_file, output_file = Path(input_file), Path(output_file)
    if output_file.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserInputError(
            f"--output {output_file}: unsupported file type '{output_file.suffix}'; it must end in "
            f"{', '.join(OUTPUT_SUFFIXES)}"
        )
    delimiter, encoding = checked_format(delimiter, encoding)
    if output_file.resolve() == input_file.resolve():
        raise UserInputError(f"--output {output_file}: is the input file; write the predictions to another file")
    classifier = load_classifier(Path(run_dir), checkpoint, runtime)
    records = read_rows(input_file, text_column or classifier.text_column, classifier.text_pair_column,
                        delimiter or classifier.delimiter, encoding or classifier.encoding)
    labelled = [record for record in records if all(is_text(value) for value in record.values.values())]
    if not labelled:
        raise UserInputError(f"{input_file}: every text is empty; --input needs texts to label")
    pairs = [str(record.values["text_pair"]) for record in labelled] if classifier.text_pair_column else None
    predictions = predictions_for(classifier, [str(record.values["text"]) for record in labelled], batch_size, pairs)
    decided = {id(record): prediction for record, prediction in zip(labelled, predictions, strict=True)}
    as_csv = output_file.suffix.lower() == ".csv"
    rows = output_rows(records, decided, classifier.label_names, as_csv)
    content = csv_text(rows) if as_csv else jsonl_text(rows)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(output_file, lambda file: file.write(content.encode("utf-8")))
    return PredictedFile(len(labelled), [record.line for record in records if id(record) not in decided])


def is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


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
                           data.text_pair_column, data.delimiter, data.encoding, run.task, precision)


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
    """load_run, with a message that says why a run folder can lack its checkpoint or what is wrong with its files."""
    read_run_files(run_dir, "loading its model")
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


def read_rows(path: Path, text_column: str, text_pair_column: str | None = None, delimiter: str | None = None,
              encoding: str = "utf-8") -> list[Record]:
    """The rows to label, each with every column (Record.row) and its text (and pair) under values: any source the
    training readers take (CSV, TSV, JSON Lines, Parquet, Excel, datasets), or each non-blank line of a .txt file
    (one text each, as the column "text")."""
    if path.suffix.lower() == ".txt":
        if text_pair_column is not None:
            raise UserInputError(f"{path}: a .txt file holds one text a line, and this model reads text pairs; give a "
                                 f"table with the columns '{text_column}' and '{text_pair_column}'")
        check_file(path, PREDICT_SETTINGS, (".txt",))
        content = decode(path.read_bytes(), path, encoding, PREDICT_SETTINGS)
        return [Record(number, {"text": line.removesuffix("\r")}, {"text": line.removesuffix("\r")})
                for number, line in enumerate(content.split("\n"), start=1) if line.strip()]
    columns = {"text": text_column} | ({"text_pair": text_pair_column} if text_pair_column else {})
    records = read_records(path, columns, PREDICT_SETTINGS, delimiter, encoding, keep_all=True)
    if not records:
        raise UserInputError(f"{path}: has a header but no rows; --input needs texts to label")
    for record in records:  # a number in a text column (a spreadsheet's) is a text; anything else is not
        record.values = {role: str(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                         else "" if value is None else value for role, value in record.values.items()}
        if not all(isinstance(value, str) for value in record.values.values()):
            raise UserInputError(f"{path}, line {record.line}: the text is not a string "
                                 f"({json.dumps(record.values, default=str, ensure_ascii=False)})")
    return records


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


PREDICTED_PREFIX = "predicted_"  # before the prediction's columns when the input has a column of one of their names


def output_rows(records: list[Record], decided: dict[int, Prediction], label_names: list[str], as_csv: bool
                ) -> list[dict[str, object]]:
    """Each input row with every column, then the prediction's: in CSV "label" and "prob_<label>" per label (a
    multi-label set joined with '|'), in JSON Lines "label" (a list, for multi-label) and "probabilities" (an
    object); a regression has the number and no probabilities. All prefixed with "predicted_" where one would hide
    an input column (a labelled file's own "label"); empty (null) for a row that was not labelled."""
    scored = any(prediction.probabilities is not None for prediction in decided.values())
    probability_names = ([f"prob_{label}" for label in label_names] if as_csv else ["probabilities"]) if scored else []
    names = ["label", *probability_names]
    prefix = PREDICTED_PREFIX if any(name in (record.row or {}) for record in records for name in names) else ""
    rows = []
    for record in records:
        prediction = decided.get(id(record))
        values: list[object] = [None] * len(names)
        if prediction is not None:
            label = "|".join(prediction.label) if as_csv and isinstance(prediction.label, list) else prediction.label
            probabilities = prediction.probabilities or {}
            values = [label, *((list(probabilities.values()) if as_csv else [probabilities]) if scored else [])]
        rows.append({**(record.row or {}), **{prefix + name: value for name, value in zip(names, values, strict=True)}})
    return rows


def csv_text(rows: list[dict[str, object]]) -> str:
    """Rows as CSV under the first row's columns; a list or object in a cell (an input's) as JSON."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value
                         for key, value in row.items()})
    return buffer.getvalue()


def jsonl_text(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
