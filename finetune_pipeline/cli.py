"""The `finetune` command. Thin: parse the arguments, call the library, turn errors into exit codes."""

import argparse
import json
import sys
from typing import Any, Callable

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
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything and try the heaviest step for memory, print the plan, train nothing")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return run_command(lambda: train_command(args.config, args.dry_run))
    return run_command(lambda: prepare_data_command(args.output_dir, args.force))


# The heavy imports (torch, transformers) happen inside the commands, so that `--help` answers at once.
def train_command(config_path: str, dry_run: bool) -> None:
    from finetune_pipeline.config import load_config
    from finetune_pipeline.run import dry_run as plan_run
    from finetune_pipeline.run import run_training
    from finetune_pipeline.run_log import configure_console_logging

    configure_console_logging()
    config = load_config(config_path)
    if dry_run:
        print(format_plan(plan_run(config)))
        return
    run_dir = run_training(config)
    print(f"run folder: {run_dir}")


def format_plan(plan: dict[str, Any]) -> str:
    precision = plan["mixed_precision"]
    training = plan["config"]["training"]
    sizes = plan["split_sizes"]
    preflight = plan["preflight"]
    lines = [
        "effective config:",
        json.dumps(plan["config"], indent=2),
        f"device: {plan['device']}; mixed precision: {precision['requested']} -> {precision['used']}"
        + (f" ({precision['reason']})" if precision["reason"] else ""),
        f"splits: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; "
        f"labels: {', '.join(plan['label_names'])}",
        f"token lengths before truncation (max_length {plan['config']['data']['max_length']}):",
        *(f"  {name}: mean {stats['mean']:.1f}, median {stats['p50']:.0f}, p95 {stats['p95']:.0f}, "
          f"max {stats['max']}; truncated {stats['truncated']} ({stats['truncated_share']:.1%})"
          for name, stats in plan["token_lengths"].items()),
        f"optimizer steps: {plan['optimizer_steps_per_epoch']} per epoch x {training['epochs']} epochs = "
        f"{plan['optimizer_steps_total']} (effective batch {plan['effective_batch_size']} = batch "
        f"{training['batch_size']} x accumulation {training['gradient_accumulation_steps']})",
        "backbone: frozen, features computed once and cached" if plan["uses_feature_cache"]
        else f"backbone: {'frozen, run every step' if training['freeze_backbone'] else 'trained'}",
        f"preflight, {preflight['what']} on the {preflight['examples']} longest texts "
        f"({preflight['padded_length']} tokens): peak {preflight['peak_mb']:,.0f} MiB + "
        f"{preflight['optimizer_state_mb']:,.0f} MiB optimizer state = {preflight['predicted_peak_mb']:,.0f} MiB "
        f"of {preflight['available_mb']:,.0f} MiB available: {'fits' if plan['fits_in_memory'] else 'DOES NOT FIT'}",
    ]
    return "\n".join(lines)


def prepare_data_command(output_dir: str | None, force: bool) -> None:
    from finetune_pipeline.default_dataset import DEFAULT_DATA_DIR, prepare_default_dataset

    prepare_default_dataset(output_dir or DEFAULT_DATA_DIR, force=force)


def run_command(command: Callable[[], None]) -> int:
    """Run a command; a user error prints one actionable message (no traceback) and exits with its code:
    2 for bad input, 3 for a run that does not fit in memory."""
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
    return run_command(lambda: train_command(args.config, args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
