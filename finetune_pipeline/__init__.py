"""finetune_pipeline: fine-tune a pretrained text encoder with a small classification head.

Where to start reading: core/training.py, the loop (epochs -> optimizer steps -> micro-batches), then
runs/run.py, one run from the command line down (prepare -> execute -> record). The subpackages, whose
imports point one way only (runtime <- core <- runs <- experiments, serving <- cli, api):

    core/         the fine-tuning itself: config -> data -> batching -> model -> training -> evaluation,
                  with the feature cache, the freeze proof and the device around them
    runtime/      the plumbing: atomic files, the log format, torchrun's processes, signals, fault points
    runs/         one run's life: its folder and metrics.json's record, resume checkpoints, the lock, memory
                  check, provenance, report
    experiments/  sweeps, and compare with its seed noise and fairness checks
    serving/      predict and evaluate, and export for transformers and onnxruntime

cli.py and scripts/train.py are the command line; api.py (with in_memory.py for DataFrames) is the Python API:

    import finetune_pipeline as ft
    run = ft.train(overrides={"model.dropout": 0.3})
"""

import importlib
from typing import TYPE_CHECKING, Any

from finetune_pipeline.errors import OutOfMemory, TrainingDiverged, UserInputError

# The API's names, imported on first use: api imports torch and transformers, and `import finetune_pipeline`
# (which every `finetune --help` does) must stay instant.
API_NAMES = ("train", "load_run", "sweep", "compare", "prepare_data", "Run", "SweepResult", "CompareResult")
__all__ = [*API_NAMES, "UserInputError", "OutOfMemory", "TrainingDiverged"]

if TYPE_CHECKING:  # editors and type checkers see the names without the lazy import
    from finetune_pipeline.api import (
        CompareResult,
        Run,
        SweepResult,
        compare,
        load_run,
        prepare_data,
        sweep,
        train,
    )


def __getattr__(name: str) -> Any:
    """Called for a name the package does not hold yet (PEP 562): the API's names come from api."""
    if name in API_NAMES:
        return getattr(importlib.import_module("finetune_pipeline.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API_NAMES})
