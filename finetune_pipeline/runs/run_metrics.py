"""metrics.json as one typed record: what a run measured, how it was set up and where it came from.

The run writes it at its start, after every epoch and at its end (run.RunFolder); compare, the report,
resume, the run lock, the plots, the model card and the Python API read it back through `RunMetrics.read`.
Every field may be missing from the file: a run that failed early, or one recorded by an older version,
has only some of them, and a reader shows what is there. A field is written only once it has been set, so
the file keeps the shape it always had (`error` appears only after an error, `resumed_from_steps` only in a
resumed run); keys this version does not know are kept as they are.
"""

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from finetune_pipeline.runtime import files

DEFAULT_METRIC_NAME = "score"  # what a val score is called when the run did not record its metric


class RunMetrics(BaseModel):
    """One run's metrics.json; nested parts (per-split metrics, provenance) stay plain JSON objects."""

    model_config = ConfigDict(extra="allow")

    # how far the run got, and its scores
    status: str = "unknown"  # running | completed | failed | interrupted
    error: str | None = None  # "Type: message" of a failed run
    metric: str | None = None  # training.metric: what best_val_score and test_score are
    best_val_score: float | None = None
    best_epoch: int | None = None
    test_score: float | None = None
    val_metrics: dict[str, Any] | None = None  # the best epoch's, from core.evaluation.evaluate
    test_metrics: dict[str, Any] | None = None  # the best checkpoint's, scored once
    history: list[dict[str, Any]] = []  # one entry per epoch: train_loss, val scores, times
    epoch_times_s: list[float] = []
    optimizer_steps: int | None = None
    stopped_early: bool | None = None
    resumed_from_steps: list[int] = []  # the optimizer step each resume continued from (0: started over)
    freeze_proof: dict[str, bool] | None = None  # freeze_proof.json's verdicts
    baselines: dict[str, dict[str, dict[str, float]]] | None = None  # split -> baseline -> metrics (runs/baselines.py)
    calibration: dict[str, Any] | None = None  # the temperature fitted on val, ECE and NLL before and after
    mistakes: dict[str, Any] | None = None  # per val/test split: the most confident wrong answers (runs/mistakes.py)
    score_flags: list[str] | None = None  # a score no better than its baseline, one class for every text
    # the data
    split_sizes: dict[str, int] | None = None
    label_names: list[str] | None = None
    task: dict[str, Any] | None = None  # core.task's record: its type (and a regression target's scaling)
    label_distribution: dict[str, dict[str, int | float]] | None = None  # split -> label -> examples (or statistics)
    class_weights: dict[str, float] | None = None  # label -> weight in the loss (training.class_weights)
    token_lengths: dict[str, dict[str, float]] = {}
    tokenization: dict[str, dict[str, Any]] | None = None
    language_warning: str | None = None
    leakage: dict[str, Any] | None = None  # duplicates and val/test texts also in train (core/leakage.py)
    data_files: dict[str, Any] | None = None  # split -> {path, sha256}, None for a split carved from train
    data_sources: dict[str, str] | None = None  # split -> how its file was chosen, in words
    feature_cache: dict[str, str] | None = None  # split -> hit | miss (frozen backbone only)
    hidden_state_cache: dict[str, str] | None = None  # split -> hit | miss (train_top_layers only)
    # the setup
    seed: int | None = None
    config_hash: str | None = None
    config_file: str | None = None  # where the config came from: its file, --set overrides, the sweep
    overrides: dict[str, Any] | None = None
    sweep: str | None = None
    sweep_member: str | None = None
    effective_batch_size: int | None = None
    optimizer_steps_per_epoch: int | None = None
    parameters: dict[str, int] | None = None
    preflight: dict[str, Any] | None = None
    # where and with what it ran
    device: str | None = None
    mixed_precision: dict[str, Any] | None = None  # requested, used, reason
    processes: int | None = None
    tf32_matmul: bool | None = None
    backbone_sha256: str | None = None
    code_version: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    # what it cost
    wall_time_s: float | None = None  # every session's time, for a resumed run
    peak_memory_mb: dict[str, float] | None = None

    @property
    def task_type(self) -> str:
        """single_label, multi_label or regression (a run from before tasks was single-label)."""
        return (self.task or {}).get("type", "single_label")

    @property
    def metric_name(self) -> str:
        return self.metric or DEFAULT_METRIC_NAME

    @property
    def peak_rss_mb(self) -> float | None:
        return (self.peak_memory_mb or {}).get("process_rss")

    def record(self, **values: Any) -> None:
        """Set fields as the run goes (each is written from then on)."""
        for name, value in values.items():
            setattr(self, name, value)

    @classmethod
    def read(cls, path: Path) -> "RunMetrics":
        """A run folder's metrics.json (artifacts.METRICS_FILE). FileNotFoundError when there is none; ValueError
        (a pydantic ValidationError is one) or OSError when it cannot be used."""
        return cls.model_validate(files.read_json_object(path))

    def write(self, path: Path) -> None:
        files.write_json(path, self.as_json())

    def as_json(self) -> dict[str, Any]:
        """The file's content: the fields set so far (in the order above), then keys of other versions."""
        return self.model_dump(mode="json", exclude_unset=True)
