"""The `finetune` command. Thin: parse the arguments, call the library, turn errors into exit codes."""

import argparse
import sys
from typing import Callable

from finetune_pipeline.errors import EXIT_INTERRUPTED, UserInputError

DEFAULT_CONFIG = "finetune_pipeline/configs/train_config.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune", description="Fine-tune a pretrained text encoder with a small classification head."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train as a JSON config says; writes a run folder")
    add_train_arguments(train)
    prepare = commands.add_parser("prepare-data", help="prepare the default dataset (Rotten Tomatoes)")
    prepare.add_argument("--output-dir", default=None, help="where to write train/val/test.csv")
    prepare.add_argument("--force", action="store_true", help="rebuild the files even if they are up to date")
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"path of the JSON config (default: {DEFAULT_CONFIG})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return run_command(lambda: train_command(args.config))
    return run_command(lambda: prepare_data_command(args.output_dir, args.force))


# The heavy imports (torch, transformers) happen inside the commands, so that `--help` answers at once.
def train_command(config_path: str) -> None:
    from finetune_pipeline.config import load_config
    from finetune_pipeline.run import run_training
    from finetune_pipeline.run_log import configure_console_logging

    configure_console_logging()
    config = load_config(config_path)
    run_dir = run_training(config)
    print(f"run folder: {run_dir}")


def prepare_data_command(output_dir: str | None, force: bool) -> None:
    from finetune_pipeline.default_dataset import DEFAULT_DATA_DIR, prepare_default_dataset

    prepare_default_dataset(output_dir or DEFAULT_DATA_DIR, force=force)


def run_command(command: Callable[[], None]) -> int:
    """Run a command; a user error prints one actionable message (no traceback) and exits 2."""
    try:
        command()
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): every file written so far is complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def train_script_main() -> int:
    """Entry for scripts/train.py, which the students' guide runs as `train.py --config ...`."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train as a JSON config says.")
    add_train_arguments(parser)
    args = parser.parse_args()
    return run_command(lambda: train_command(args.config))


if __name__ == "__main__":
    sys.exit(main())
