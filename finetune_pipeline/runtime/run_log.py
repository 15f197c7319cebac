"""train.log: one line per event, as `key=value` pairs that both people and scripts can read.

    2026-11-24 11:40:02 event=step epoch=1 step=50 loss=0.6931 lr_head=0.000992 ...

Values with spaces are double-quoted; `parse_line` turns a line back into a dict.
"""

import logging
import sys
import shlex
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

LOGGER_NAME = "finetune_pipeline"
logger = logging.getLogger(LOGGER_NAME)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value).replace("\n", " | ")  # one event, one line: a multi-line message would break parsing
    return shlex.quote(text) if (not text or any(c.isspace() or c in "\"'=" for c in text)) else text


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One key=value line; a warning's message also goes with the record as it is, for the console
    (ConsoleFormatter)."""
    plain = {"plain": str(fields["message"])} if level >= logging.WARNING and "message" in fields else None
    line = " ".join([f"event={event}", *(f"{key}={format_value(value)}" for key, value in fields.items())])
    logger.log(level, line, extra=plain)


class ConsoleFormatter(logging.Formatter):
    """Events as their key=value lines, and a warning as a plain 'WARNING: ...' line that cannot be missed among
    them (train.log keeps the key=value line)."""

    def format(self, record: logging.LogRecord) -> str:
        plain = getattr(record, "plain", None)
        return f"WARNING: {plain}" if plain is not None else record.getMessage()


def parse_line(line: str) -> dict[str, str]:
    """'2026-11-24 11:40:02 event=step loss=0.69' -> {'time': '2026-11-24 11:40:02', 'event': 'step', 'loss': '0.69'}."""
    date, time, rest = line.rstrip("\n").split(" ", 2)
    return {"time": f"{date} {time}", **parse_fields(rest)}


def parse_fields(message: str) -> dict[str, str]:
    """'event=step loss=0.69' -> {'event': 'step', 'loss': '0.69'}: the part of a line after its time."""
    return dict(token.split("=", 1) for token in shlex.split(message))


def read_events(path: str | Path, event: str | None = None) -> list[dict[str, str]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    events = [parse_line(line) for line in lines if line.strip()]
    return [entry for entry in events if event is None or entry.get("event") == event]


class LogFileHandler(logging.FileHandler):
    """train.log; when a line cannot be written (a full disk), one warning on the console instead of logging's
    traceback for every line that follows (the run's own error says what happened)."""

    unwritable = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.unwritable:
            self.unwritable = True
            print(f"warning: {self.baseFilename}: a log line could not be written ({sys.exc_info()[1]}); "
                  "the following lines go to the console only", file=sys.stderr)


class RunLogging:
    """Sends the package's log to the console and to the run's train.log, for the span of a `with`.

    Console lines go through tqdm so that they do not break the progress bars.
    """

    def __init__(self, log_file: Path, *extra_handlers: logging.Handler) -> None:
        file_handler = LogFileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        self.handlers = [file_handler, *extra_handlers]  # e.g. TensorBoard, which reads the same events
        self.redirect = logging_redirect_tqdm([logger])

    def __enter__(self) -> "RunLogging":
        self.previous_level = logger.level
        logger.setLevel(logging.INFO)  # train.log gets every event, whatever the caller's logging setup
        for handler in self.handlers:
            logger.addHandler(handler)
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.redirect.__exit__(*exc_info)
        for handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(self.previous_level)


def configure_console_logging(level: int = logging.INFO) -> None:
    """Console output: the message only. The CLI shows every event (level INFO); the Python API, whose cells in a
    notebook would fill with them, warnings only (level WARNING): every event is in the run's train.log anyway."""
    for previous in [handler for handler in logger.handlers if handler.get_name() == "console"]:
        logger.removeHandler(previous)  # called again in one process (tests, notebooks): one console, today's
    handler = logging.StreamHandler()
    handler.set_name("console")
    handler.setFormatter(ConsoleFormatter())
    # a filter, not setLevel: tqdm's redirect (RunLogging) copies a console handler's filters, not its level
    handler.addFilter(lambda record: record.levelno >= level)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
