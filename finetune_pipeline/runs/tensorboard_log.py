"""Live TensorBoard curves: `tensorboard --logdir finetune_pipeline/artifacts` shows every run.

A logging handler reads the same records that become train.log lines and writes their numbers as
TensorBoard scalars, so the training loop does not need to know that TensorBoard exists.
TensorBoard is an optional extra (`pip install -e .[tensorboard]`): without it `open_tensorboard`
returns None and the run goes on with train.log alone.
"""

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_pipeline.core.config import flatten
from finetune_pipeline.runtime.run_log import parse_fields

if TYPE_CHECKING:  # only for the type hints: the import itself may fail at run time
    from torch.utils.tensorboard import SummaryWriter

TENSORBOARD_DIR = "tensorboard"
FLUSH_SECONDS = 10  # how stale TensorBoard may be while a run goes on (SummaryWriter's default is 120)

# For each train.log event: the field that gives the x axis (global step), and field -> scalar tag.
SCALARS: dict[str, tuple[str, dict[str, str]]] = {
    "step": ("step", {"loss": "train/loss", "lr_head": "train/lr_head", "lr_encoder": "train/lr_encoder",
                      "samples_per_s": "train/samples_per_s"}),
    "epoch": ("epoch", {"val_score": "val/score", "val_accuracy": "val/accuracy", "val_macro_f1": "val/macro_f1",
                        "train_loss": "train/epoch_loss"}),
    "test": ("best_epoch", {"test_score": "test/score"}),  # the test evaluates the best epoch's checkpoint
}
HPARAM_METRICS = ("best_val_score", "test_score", "wall_time_s")


class TensorBoardHandler(logging.Handler):
    """Turns `event=step|epoch|test` log records into TensorBoard scalars."""

    def __init__(self, writer: "SummaryWriter") -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = parse_fields(record.getMessage())  # every message is a train.log line without its time
            if fields.get("event") not in SCALARS:
                return
            step_field, tags = SCALARS[fields["event"]]
            step = as_finite_number(fields.get(step_field))
            if step is None:
                return
            for field, tag in tags.items():
                value = as_finite_number(fields.get(field))
                if value is not None:
                    self.writer.add_scalar(tag, value, global_step=int(step))
        except Exception:
            self.handleError(record)  # logging's rule: a broken handler must not break the program

    def write_hparams(self, config_plain: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The flattened config next to the run's results, for TensorBoard's HPARAMS tab."""
        hparams = {key: "null" if value is None else value for key, value in flatten(config_plain).items()
                   if value is None or isinstance(value, (bool, int, float, str))}
        results = {f"hparam/{key}": float(metrics[key]) for key in HPARAM_METRICS
                   if as_finite_number(metrics.get(key)) is not None}
        # run_name=".": into this run's own folder (the default makes a new folder, i.e. a separate run)
        self.writer.add_hparams(hparams, results, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        super().close()


def open_tensorboard(run_dir: Path) -> TensorBoardHandler | None:
    """A handler writing to run_dir/tensorboard/, or None when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return TensorBoardHandler(SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), flush_secs=FLUSH_SECONDS))


def as_finite_number(value: Any) -> float | None:
    """'0.69' -> 0.69; None for text that is not a number, and for nan and inf (TensorBoard cannot plot them)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
