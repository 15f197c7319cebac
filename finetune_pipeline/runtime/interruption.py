"""Ctrl-C and SIGTERM: a run stops between optimizer steps, never halfway through one.

Python runs a signal handler between two bytecodes, so a Ctrl-C could land after AdamW updated the
head's weights and before it updated the encoder's. Inside `signals_deferred()` the signal is noted and
raised when the block ends, so the weights a stopped run saves are exactly those of a completed step.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop: Ctrl-C (SIGINT) or SIGTERM (a closed session, `kill`, a job scheduler)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


_deferring = False
_pending: int | None = None


def _handle(signal_number: int, frame: FrameType | None) -> None:
    global _pending
    if _deferring:
        _pending = signal_number
        return
    raise Interrupted(signal_number)


@contextlib.contextmanager
def stop_signals_handled() -> Iterator[None]:
    """For the span of a run: Ctrl-C and SIGTERM raise Interrupted (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending
    previous = {number: signal.signal(number, _handle) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        _pending = None
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A stop signal that arrives inside this block is raised when the block ends."""
    global _deferring, _pending
    if _deferring:  # nested: the outer block raises
        yield
        return
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    if _pending is not None:
        signal_number, _pending = _pending, None
        raise Interrupted(signal_number)
