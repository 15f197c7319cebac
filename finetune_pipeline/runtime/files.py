"""Files written atomically, and checkpoints read safely.

Every file is written to a temporary name in the same folder and then renamed over the target. A rename
within one filesystem is atomic, so a crash or Ctrl-C leaves either the old file or the new one, never half
of one. Checkpoints are read with torch.load(weights_only=True) only: tensors and plain types, no code.
"""

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from finetune_pipeline.errors import SYSTEM_FAULT_FIXES, UserInputError
from finetune_pipeline.runtime.faults import fault_point

# mkstemp creates files readable by the owner only; finished artifacts get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomically(path: Path, write: Callable[[Any], None]) -> None:
    """Call write(file) on a temporary file next to path, flush it to disk, then rename it to path."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        fault_point("write")
        fault_point(f"write_{path.name}")
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def reserve_space(path: Path, size: int) -> None:
    """A file of size bytes that really holds its blocks on the disk (written, not sparse), to be deleted when
    that room is needed."""
    with path.open("wb") as file:
        file.write(bytes(size))
        file.flush()
        os.fsync(file.fileno())


def remove_stale_temporaries(folder: Path) -> None:
    """A process killed with SIGKILL in the middle of write_atomically leaves its temporary file behind (the
    target file itself is untouched): whoever takes the folder over next removes them."""
    for temporary in folder.glob(".*.tmp"):
        temporary.unlink(missing_ok=True)


def write_json(path: Path, payload: Any) -> None:
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_atomically(path, lambda file: file.write(text.encode("utf-8")))


def read_json_object(path: Path) -> dict[str, Any]:
    """A run file's JSON object. A failed or interrupted run may lack the file (FileNotFoundError); anything
    else unusable raises ValueError (bad UTF-8 or JSON are ValueErrors too) or OSError."""
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict):
        raise ValueError(f"holds {type(content).__name__}, not a JSON object")
    return content


def save_torch(path: Path, payload: Any) -> None:
    write_atomically(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found")
    try:
        # weights_only=True: unpickling arbitrary objects can run code; tensors and plain types cannot.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message goes on to suggest weights_only=False, which is exactly what must not be done here
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        raise UserInputError(
            f"{path}: refused to load: it holds objects other than tensors and plain types"
            f"{f' ({found.group(1)})' if found else ''}, and unpickling them could run code on this machine. This "
            "package writes only tensors and plain types: the file was not written by it, or was altered; use the "
            "run's own checkpoint, or train again"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # cut short (torch: EINVAL on its seek), or not a checkpoint
        if isinstance(err, OSError) and err.errno in SYSTEM_FAULT_FIXES:
            raise  # the machine's refusal (permission, I/O): the CLI words it as one (exit 5)
        raise UserInputError(
            f"{path}: not a readable checkpoint ({type(err).__name__}), most likely cut short (a copy or a disk that "
            "stopped mid-file); its run folder's other checkpoint (best_model.pt or final_model.pt) may be whole, "
            "else train again"
        ) from None
