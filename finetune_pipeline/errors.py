"""Errors that are the user's to fix, and the exit codes the CLI maps them to.

Anything else that escapes a command is a bug in this package: the CLI prints one line saying so, and the
traceback only with `finetune --debug` or FINETUNE_DEBUG=1.
"""

import errno

EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_DIVERGED = 4
EXIT_SYSTEM_FAULT = 5
EXIT_INTERNAL_ERROR = 70  # sysexits.h's EX_SOFTWARE: a bug in this package
EXIT_INTERRUPTED = 130  # the shell's convention for a process stopped by Ctrl-C (128 + SIGINT)

# what each refusal of the machine asks the user to do
SYSTEM_FAULT_FIXES = {
    errno.ENOSPC: "free space on that disk, or point output.artifacts_root and output.cache_dir at a disk with room "
                  "(df -h shows what is free)",
    errno.EDQUOT: "your disk quota is used up: free space, or point output.artifacts_root at another disk",
    errno.EACCES: "you may not write there: choose a folder you own in the config, or fix its permissions (ls -ld "
                  "shows its owner)",
    errno.EPERM: "you may not write there: choose a folder you own in the config, or fix its permissions",
    errno.EROFS: "that file system is read-only: choose a folder on a writable disk in the config",
    errno.EIO: "the disk reported an input/output error: check the disk (dmesg), or use another one",
}


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


class SystemFault(UserInputError):
    """The machine refused: a full disk, a folder that may not be written, a read-only file system."""

    exit_code = EXIT_SYSTEM_FAULT


def system_fault(error: OSError) -> SystemFault:
    """An OSError in the user's words: the file, the machine's reason, and what to do about it."""
    where = f"{error.filename}: " if error.filename else ""
    reason = error.strerror or str(error)
    fix = SYSTEM_FAULT_FIXES.get(error.errno, "check that file and its folder")
    return SystemFault(f"{where}{reason}; {fix}")
