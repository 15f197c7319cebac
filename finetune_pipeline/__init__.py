"""finetune_pipeline: fine-tune a pretrained text encoder with a small classification head.

Read it in the order a run goes: config -> data -> batching -> model -> training (the loop) ->
evaluation; feature_cache, memory_check and freeze_proof around it; artifacts and run_log for what
is written; run wires the steps, cli and scripts/train.py are the entry points, and api (with
in_memory for DataFrames) is the Python API:

    import finetune_pipeline as ft
    run = ft.train(overrides={"model.dropout": 0.3})
"""

import importlib
from typing import TYPE_CHECKING, Any

from finetune_pipeline.errors import OutOfMemory, TrainingDiverged, UserInputError

# The API's names, imported on first use: api imports torch and transformers, and `import finetune_pipeline`
# (which every `finetune --help` does) must stay instant.
API_NAMES = ("train", "load_run", "run_sweep", "compare_runs", "prepare_data", "Run", "SweepResult", "CompareResult")
__all__ = [*API_NAMES, "UserInputError", "OutOfMemory", "TrainingDiverged"]

if TYPE_CHECKING:  # editors and type checkers see the names without the lazy import
    from finetune_pipeline.api import (
        CompareResult,
        Run,
        SweepResult,
        compare_runs,
        load_run,
        prepare_data,
        run_sweep,
        train,
    )


def __getattr__(name: str) -> Any:
    """Called for a name the package does not hold yet (PEP 562): the API's names come from api."""
    if name in API_NAMES:
        return getattr(importlib.import_module("finetune_pipeline.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API_NAMES})
