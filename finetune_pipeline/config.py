"""The config schema: every knob, its default, its allowed range, and the loading that checks them.

Defaults live here and nowhere else. A config file only needs the keys it changes; the rest come
from this schema, and the effective config (file merged over defaults) is saved with every run.
"""

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finetune_pipeline.errors import UserInputError

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DATA_DIR = "finetune_pipeline/data/rotten_tomatoes"


class StrictModel(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class ColumnNames(StrictModel):
    """Per-file column names; a key left out falls back to data.text_column / data.label_column."""

    text_column: str | None = None
    label_column: str | None = None


class ColumnOverrides(StrictModel):
    train: ColumnNames = ColumnNames()
    val: ColumnNames = ColumnNames()
    test: ColumnNames = ColumnNames()


class DataConfig(StrictModel):
    train_file: str = f"{DEFAULT_DATA_DIR}/train.csv"
    # null: carve this split out of train_file (stratified, seeded) with the fraction below.
    val_file: str | None = f"{DEFAULT_DATA_DIR}/val.csv"
    test_file: str | None = f"{DEFAULT_DATA_DIR}/test.csv"
    text_column: str = "text"
    label_column: str = "label"
    columns: ColumnOverrides = ColumnOverrides()
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    max_length: int = Field(256, ge=8, le=8192)


class ModelConfig(StrictModel):
    backbone: str = DEFAULT_BACKBONE
    pooling: Literal["mean", "cls"] = "mean"
    hidden_dim: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class TrainingConfig(StrictModel):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(8, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    encoder_learning_rate: float = Field(2e-5, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    freeze_backbone: bool = True
    # frozen backbone only: compute its features once, reuse them from output.cache_dir across runs
    cache_features: bool = True
    # batches of similar-length texts (shuffled), the longest first: less padding, early out-of-memory
    group_by_length: bool = True
    # trained backbone only: recompute activations during backward, trading compute for memory
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    log_every_steps: int = Field(50, ge=1)
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    early_stopping_patience: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class OutputConfig(StrictModel):
    artifacts_root: str = "finetune_pipeline/artifacts"
    cache_dir: str = "finetune_pipeline/cache"


class Config(StrictModel):
    seed: int = Field(42, ge=0, le=2**32 - 1)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    output: OutputConfig = OutputConfig()

    def effective_batch_size(self) -> int:
        return self.training.batch_size * self.training.gradient_accumulation_steps

    def to_plain(self) -> dict[str, Any]:
        """The effective config as plain JSON types (what metrics.json and checkpoints store)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_plain(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_config(path: str | Path) -> Config:
    """Read a JSON config file and validate it; every problem becomes one readable UserInputError."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"config {path}: is a directory; pass the path of a .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(
            f"config {path}: file not found; copy finetune_pipeline/configs/train_config.json "
            "and pass its path with --config"
        ) from None
    except UnicodeDecodeError as err:
        raise UserInputError(f"config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"config {path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    return config_from_dict(raw, source=str(path))


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
    return f"{key}: {problem['msg']} (got {json.dumps(problem.get('input'), default=str)})"


def allowed_keys(location: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in location:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
