"""Errors that are the user's to fix, and the exit codes the CLI maps them to.

Anything else that escapes is a bug in this package and keeps its traceback.
"""

EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_DIVERGED = 4
EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by Ctrl-C (128 + SIGINT)


class UserInputError(Exception):
    """Bad config, data or arguments: the message says what, where, and how to fix it."""

    exit_code = EXIT_BAD_INPUT
    run_dir = None  # set when the error stopped a run that had already created its folder


class OutOfMemory(UserInputError):
    """The run does not fit in memory: the message names the cause and the knobs that make it fit."""

    exit_code = EXIT_OUT_OF_MEMORY
    fix: dict = {}  # the config change that the rerun command suggests, e.g. {"training.eval_batch_size": 16}


class TrainingDiverged(UserInputError):
    """The loss became NaN or infinite: the update that would have spread it was not applied (the checkpoints so far
    stay usable), and the settings (usually the learning rate) are what to change."""

    exit_code = EXIT_DIVERGED
