"""The ONNX folder: the model for onnxruntime, and what it takes to feed it.

    model.onnx       inputs input_ids and attention_mask (int64, batch x sequence, both dynamic), output logits
    tokenizer files  the run's tokenizer (hf_folder.exported_tokenizer): its tokenizer.json truncates to
                     max_length and pads by itself, so the `tokenizers` library alone can prepare the inputs
    classifier.json  the label names (the logits' columns, in order), max_length, the text column, the run

The graph comes from torch.onnx.export's dynamo exporter (torch.export, then onnxscript's translation),
in opset 20. onnx, onnxscript and onnxruntime are the optional extra `export`.
"""

import importlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune_pipeline.core.batching import TokenBatch, TokenizedSplit, evaluation_batches, tokenize_split
from finetune_pipeline.core.data import Example
from finetune_pipeline.core.task import Task, loaded_task
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.artifacts import LoadedRun
from finetune_pipeline.runtime.files import read_json_object
from finetune_pipeline.serving.hf_folder import exported_tokenizer

MODEL_FILE = "model.onnx"
INFO_FILE = "classifier.json"
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAME = "logits"
OPSET = 20  # onnxruntime runs it from 1.17 on
PROTOBUF_LIMIT_BYTES = 2 * 2**30  # a larger model.onnx keeps its weights in a model.onnx.data file beside it
INSTALL_EXTRA = 'pip install "finetune-pipeline[export]"'


def require(module_name: str, purpose: str) -> ModuleType:
    """Import an optional package, or say which extra installs it."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise UserInputError(f"{purpose} needs the {module_name} package, from the optional extra 'export': "
                             f"{INSTALL_EXTRA}") from None


def require_export_packages(purpose: str) -> None:
    for module_name in ("onnx", "onnxscript"):  # what torch.onnx.export's dynamo exporter imports
        require(module_name, purpose)


def write_onnx_folder(run: LoadedRun, folder: Path, source: dict[str, str]) -> None:
    """Write model.onnx, the tokenizer and classifier.json into folder (a new temporary folder, renamed into
    place when complete)."""
    example = example_batch(run)
    # Quiet what the exporter says about itself: torchvision's operators (this model has none), torch's own
    # deprecations, and that both inputs share the axis names (which is the point).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"# The axis name", category=UserWarning)
        program = torch.onnx.export(
            run.model, (example.input_ids, example.attention_mask), input_names=INPUT_NAMES,
            output_names=[OUTPUT_NAME], dynamic_shapes={name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES},
            opset_version=OPSET, dynamo=True, verbose=False,
        )
    weight_bytes = sum(tensor.numel() * tensor.element_size() for tensor in run.model.state_dict().values())
    program.save(str(folder / MODEL_FILE), external_data=weight_bytes >= PROTOBUF_LIMIT_BYTES)
    exported_tokenizer(run).save_pretrained(folder)
    thresholds = run.model.head.decision_thresholds
    info = {"label_names": run.label_names, "max_length": run.config.data.max_length,
            "text_column": run.config.data.text_column, "text_pair_column": run.config.data.text_pair_column,
            "delimiter": run.config.data.delimiter, "encoding": run.config.data.encoding,
            "task": run.task.record(), "thresholds": None if thresholds is None else thresholds.tolist(),
            "inputs": INPUT_NAMES, "output": OUTPUT_NAME, "opset": OPSET, **source}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def quantize_onnx_folder(folder: Path) -> None:
    """Make folder's model.onnx int8: onnxruntime's dynamic quantization (weights stored as int8, activations
    quantized per batch as it runs), what CPU serving uses; the rest of the folder stays as it is."""
    quantization = require("onnxruntime.quantization", "finetune export --format onnx-int8")
    quantized = folder / f"int8-{MODEL_FILE}"
    # Its advice to pre-process goes to the root logger, whose first warning would set up logging for the whole
    # process: a handler of our own there, for the call. Per channel (one scale per output row of each weight) and
    # 7-bit weights (reduce_range, which onnxruntime advises with per channel): the default run's test accuracy
    # lost 1 point per tensor, 0.7 per channel, 0.07 with both (benchmarks/README.md).
    root, quiet, level = logging.getLogger(), logging.NullHandler(), logging.getLogger().level
    root.addHandler(quiet)
    root.setLevel(logging.ERROR)
    try:
        quantization.quantize_dynamic(folder / MODEL_FILE, quantized, weight_type=quantization.QuantType.QInt8,
                                      per_channel=True, reduce_range=True)
    finally:
        root.removeHandler(quiet)
        root.setLevel(level)
    for leftover in folder.glob(f"{MODEL_FILE}*"):  # model.onnx and its external data, if any
        leftover.unlink()
    quantized.rename(folder / MODEL_FILE)
    add_info(folder, {"quantization": "int8, onnxruntime.quantization.quantize_dynamic (QInt8 weights, per "
                                      "channel, reduce_range)"})


def add_info(folder: Path, entries: dict[str, object]) -> None:
    """More keys in the folder's classifier.json (written before the folder is renamed into place)."""
    info = read_json_object(folder / INFO_FILE) | entries
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def example_batch(run: LoadedRun) -> TokenBatch:
    """Two texts of different lengths, padded as predict pads them: the exporter traces with real inputs.
    (Sizes 0 and 1 would be fixed in the graph; 2 and a multiple of 8 stay dynamic.)"""
    texts = ["an example", "a somewhat longer example text"]
    examples = [Example(text=text, label="", line=line) for line, text in enumerate(texts, start=1)]
    return tokenize_split(examples, lambda label: 0, run.tokenizer, run.config.data.max_length).batch([0, 1])


def is_onnx_export(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / INFO_FILE).is_file()


@dataclass
class OnnxClassifier:
    """An exported model in onnxruntime, with the run's tokenizer and settings."""

    label_names: list[str]
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    text_column: str
    text_pair_column: str | None
    delimiter: str | None
    encoding: str
    task: Task
    thresholds: torch.Tensor | None
    session: Any  # onnxruntime.InferenceSession

    def logits(self, split: TokenizedSplit, batch_size: int) -> torch.Tensor:
        """(examples, num_labels) float32, in the split's order; batches of similar lengths, as predict's."""
        logits = torch.empty(len(split), len(self.label_names))
        for indices in evaluation_batches(split.lengths, batch_size):
            batch = split.batch(indices)
            feed = {"input_ids": batch.input_ids.numpy(), "attention_mask": batch.attention_mask.numpy()}
            logits[indices] = torch.from_numpy(self.session.run([OUTPUT_NAME], feed)[0])
        return logits


def load_onnx_export(folder: Path) -> OnnxClassifier:
    onnxruntime = require("onnxruntime", "--runtime onnx")
    info = read_json_object(folder / INFO_FILE)
    session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    # an export from before tasks and pairs was single-label, one text
    task = loaded_task(info["label_names"], info.get("task"), "accuracy")
    thresholds = None if info.get("thresholds") is None else torch.tensor(info["thresholds"])
    return OnnxClassifier(info["label_names"], AutoTokenizer.from_pretrained(folder), info["max_length"],
                          info["text_column"], info.get("text_pair_column"), info.get("delimiter"),
                          info.get("encoding", "utf-8"), task, thresholds, session)
