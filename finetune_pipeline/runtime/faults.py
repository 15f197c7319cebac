"""Fault injection, for the tests: die at a named point, as a power cut or the out-of-memory killer would.

    FINETUNE_FAULT=POINT:N[:SIGNAL]

makes the process send itself SIGNAL (default SIGKILL) the N-th time it passes POINT. The points:
"micro_batch" (after a backward pass, mid optimizer step), "step" (after an optimizer step),
"epoch_end" (after validation, before the epoch's files are written), "write" (any file written
atomically: its temporary file is complete but not yet renamed into place), "write_<file name>" (the
same, for one file, e.g. write_resume.pt) and "extraction" (after a batch of backbone features).
Unset, every point costs one dictionary lookup.
"""

import collections
import os
import signal

FAULT_VARIABLE = "FINETUNE_FAULT"
_passes: collections.Counter[str] = collections.Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return
    point, count, *signal_name = spec.split(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(count):
        os.kill(os.getpid(), getattr(signal, signal_name[0]) if signal_name else signal.SIGKILL)
