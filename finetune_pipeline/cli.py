"""The `finetune` command. Thin: parse the arguments, call the library, turn errors into exit codes."""

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

from finetune_pipeline.errors import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, UserInputError, system_fault

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = "finetune_pipeline/configs/train_config.json"
CONFIGS_DIR = Path("finetune_pipeline/configs")
DEFAULT_ARTIFACTS_ROOT = "finetune_pipeline/artifacts"
EXIT_SWEEP_HAD_FAILURES = 1
DEBUG_VARIABLE = "FINETUNE_DEBUG"  # set to 1: an error prints its traceback too (as --debug does)


class Parser(argparse.ArgumentParser):
    """argparse with a way out of the commonest slip: a config key given as an option (`--epochs 3`)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            message += config_key_hint(message.removeprefix("unrecognized arguments:").split())
        super().error(message)


def config_key_hint(arguments: list[str]) -> str:
    """'; config values are set with --set KEY=VALUE: --set training.epochs=3' for ['--epochs', '3']."""
    from finetune_pipeline.core.config import Config, config_settings

    keys = list(config_settings(Config().to_plain()))
    hints = []
    for position, argument in enumerate(arguments):
        name, _, value = argument.removeprefix("--").partition("=")
        following = arguments[position + 1] if position + 1 < len(arguments) else ""
        value = value or ("" if following.startswith("-") else following)
        leaf = name.replace("-", "_")
        matches = [key for key in keys if key == leaf or key.endswith(f".{leaf}")]
        if argument.startswith("--") and matches:
            hints.append(f"--set {matches[0]}={value or 'VALUE'}")
    return f"; config values are set with --set KEY=VALUE: {' '.join(hints)}" if hints else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="finetune", description="Fine-tune a pretrained text encoder with a small classification head.",
        epilog="Run `finetune COMMAND --help` for a command's options and examples.",
    )
    add_debug_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, epilog=f"examples:\n{examples}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    train = command("train", "train as a JSON config says; writes a run folder",
                    "  finetune train --config finetune_pipeline/configs/train_config_exp1.json\n"
                    "  finetune train --set training.batch_size=4 --set data.max_length=384\n"
                    "  finetune train --config my.json --dry-run\n"
                    "  finetune train --from-run finetune_pipeline/artifacts/20261126-101500 --set seed=43\n"
                    "  finetune train --resume finetune_pipeline/artifacts/20261126-101500\n"
                    "  finetune train --resume                # the newest unfinished run")
    add_train_arguments(train)

    prepare = command("prepare-data", "prepare the default dataset (Rotten Tomatoes)", "  finetune prepare-data")
    prepare.add_argument("--output-dir", default=None, help="where to write train/val/test.csv")
    prepare.add_argument("--force", action="store_true", help="rebuild the files even if they are up to date")

    new = command("new-experiment", "write a new config that differs from another in the values you --set",
                  "  finetune new-experiment exp2 --set model.dropout=0.3\n"
                  "  finetune new-experiment exp3 --from finetune_pipeline/configs/exp2.json "
                  "--set training.learning_rate=0.0005")
    new.add_argument("name", help=f"the new config is written to {CONFIGS_DIR}/NAME.json")
    new.add_argument("--from", dest="source", default=DEFAULT_CONFIG,
                     help=f"the config to start from (default: {DEFAULT_CONFIG})")
    add_set_argument(new)

    sweep = command("sweep", "run an experiment's members one after another, then compare them",
                    "  finetune sweep A --seeds 42,43,44     # the baseline, three seeds: how big is seed noise?\n"
                    "  finetune sweep C                      # head width x dropout, 9 runs\n"
                    "  finetune sweep D --set training.epochs=1\n"
                    "  finetune sweep C --member hidden_dim=128,dropout=0.1   # one member of C\n"
                    "  finetune sweep my_sweep.json\n"
                    "  finetune sweep --from-run finetune_pipeline/artifacts/20261126-101500 --seeds 43,44"
                    "   # that run again, other seeds")
    presets = ", ".join(sorted(path.stem for path in (PACKAGE_DIR / "configs" / "experiments").glob("*.json")))
    sweep.add_argument("sweep", nargs="?", default=None,
                       help=f"a preset ({presets}: finetune_pipeline/configs/experiments/) or a sweep file")
    sweep.add_argument("--member", dest="members", action="append", default=None, metavar="NAME",
                       help="run only this member of the preset or sweep file (repeatable); its name as the "
                            "sweep's compare table and sweep.json show it, e.g. --member hidden_dim=128,dropout=0.1")
    sweep.add_argument("--from-run", dest="from_runs", action="append", default=[], metavar="RUN_DIR",
                       help="instead of a preset: rerun this run's own config (its config.json); repeatable")
    sweep.add_argument("--seeds", type=parse_seeds, default=None,
                       help="comma-separated seeds, each member runs with each")
    add_set_argument(sweep)

    compare = command("compare",
                      "compare runs: scores, time, memory, loss stability, and whether the comparison is fair",
                      "  finetune compare finetune_pipeline/artifacts/20261126-101500 "
                      "finetune_pipeline/artifacts/20261126-102000\n"
                      "  finetune compare finetune_pipeline/artifacts/sweeps/20261126-110000-C\n"
                      "  finetune compare 'finetune_pipeline/artifacts/20261126-*'\n"
                      "  finetune compare --last 3 --ref finetune_pipeline/artifacts/20261126-101500")
    compare.add_argument("runs", nargs="*", help="run folders, sweep folders or glob patterns")
    compare.add_argument("--last", type=int, default=None, metavar="N", help="the N newest runs")
    compare.add_argument("--ref", default=None, metavar="RUN_DIR",
                         help="the run the others are compared with (default: the first run named; with --last, "
                              "the oldest)")
    compare.add_argument("--artifacts-root", default=DEFAULT_ARTIFACTS_ROOT, help="where --last looks for runs")
    compare.add_argument("--output-dir", default=None, help="where compare.md/.csv/.png go "
                         "(default: the sweep folder for one sweep, else ARTIFACTS_ROOT/comparisons/<time>)")

    evaluate = command("evaluate", "score a trained run on any labelled file",
                       "  finetune evaluate finetune_pipeline/artifacts/20261126-101500 --data my_reviews.csv\n"
                       "  finetune evaluate RUN_DIR --data other_reviews.tsv --text-column content")
    evaluate.add_argument("run_dir", help="a run folder, or its transformers export (RUN_DIR/export/hf)")
    evaluate.add_argument("--data", required=True,
                          help="a labelled .csv, .tsv, .jsonl, .parquet or .xlsx file, or a datasets folder")
    evaluate.add_argument("--text-column", default=None, help="default: the run's data.text_column")
    evaluate.add_argument("--label-column", default=None, help="default: the run's data.label_column")
    add_format_arguments(evaluate)
    evaluate.add_argument("--name", default=None,
                          help="the result goes to RUN_DIR/evaluations/NAME.json (default: the file's name)")

    errors = command("errors", "the most confident mistakes of a run, and its most frequent confusions",
                     "  finetune errors finetune_pipeline/artifacts/20261126-101500\n"
                     "  finetune errors RUN_DIR --split val --n 50")
    errors.add_argument("run_dir", help="a completed run folder")
    errors.add_argument("--split", default="test", choices=("val", "test"), help="default: test")
    errors.add_argument("--n", type=int, default=20, help="how many (default 20; a run keeps 50 per split)")

    predict = command("predict", "label new texts with a trained run",
                      "  finetune predict finetune_pipeline/artifacts/20261126-101500 --text \"A warm, funny film.\"\n"
                      "  finetune predict RUN_DIR --input reviews.csv --output predictions.csv\n"
                      "  finetune predict RUN_DIR --input reviews.txt --output predictions.jsonl\n"
                      "  finetune predict RUN_DIR/export/hf --text \"Dull.\"\n"
                      "  finetune predict RUN_DIR --runtime onnx --text \"Dull.\"    # RUN_DIR/export/onnx")
    predict.add_argument("run_dir", help="a run folder or an export folder (finetune export)")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to label (repeatable)")
    predict.add_argument("--text-pair", action="append", default=None,
                         help="a model trained on text pairs: the second text of each --text, in the same order")
    source.add_argument("--input",
                        help="a .csv, .tsv, .jsonl, .parquet or .xlsx file or a datasets folder with a text column, "
                             "or .txt with one text per line")
    predict.add_argument("--output", help="with --input: the .csv or .jsonl file to write")
    predict.add_argument("--text-column", default=None, help="default: the run's data.text_column")
    add_format_arguments(predict)
    predict.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    predict.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                         help="torch (default): a run folder or its transformers export; onnx: onnxruntime on "
                              "the ONNX export (its folder, or the run folder that holds export/onnx)")

    export = command("export", "write a completed run's model for transformers and onnxruntime, with a model card",
                     "  finetune export finetune_pipeline/artifacts/20261126-101500      # RUN_DIR/export/hf\n"
                     "  finetune export RUN_DIR --format all --checkpoint final --output exported/")
    export.add_argument("run_dir", help="a completed run folder")
    export.add_argument("--format", dest="export_format", choices=["hf", "onnx", "onnx-int8", "all"], default="hf",
                        help="hf (default): a transformers folder; onnx: model.onnx for onnxruntime; onnx-int8: "
                             "the same, quantized to int8 for CPU serving (export/onnx-int8; predict it with "
                             "--runtime onnx); all: the three")
    export.add_argument("--checkpoint", choices=["best", "final"], default="best",
                        help="best (default): the best epoch's checkpoint; final: the last epoch's")
    export.add_argument("--output", default=None, metavar="DIR",
                        help="where the hf/, onnx/ and onnx-int8/ folders go (default: RUN_DIR/export)")
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help=f"path of the JSON config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--from-run", default=None, metavar="RUN_DIR",
                        help="train again with a run's own config (RUN_DIR/config.json), changed by any --set")
    add_set_argument(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything and try the heaviest step for memory, print the plan, train nothing")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                        help="continue an interrupted or crashed run from its newest checkpoint, in its own folder "
                             "(no RUN_DIR: the newest unfinished run under the config's artifacts_root)")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: resume even though the code changed since the run started")


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delimiter", default=None,
                        help="of a .csv file: one character or 'tab' (default: the run's data.delimiter, or its "
                             "split's own for one of the run's files; unset, detected)")
    parser.add_argument("--encoding", default=None,
                        help="of a text file, e.g. cp1251 (default: as the run read its data, data.encoding)")


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"an error prints its Python traceback too (as {DEBUG_VARIABLE}=1 does)")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change one config value, e.g. --set training.batch_size=4 (repeatable; "
                             "the value is read as JSON where it parses, else as text)")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 42,43,44") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed, e.g. 42,43,44")
    return seeds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[], int | None]] = {
        "train": lambda: train_command(config_argument(args), args.overrides, args.dry_run, args.resume, args.force),
        "prepare-data": lambda: prepare_data_command(args.output_dir, args.force),
        "new-experiment": lambda: new_experiment_command(args.name, args.source, args.overrides),
        "sweep": lambda: sweep_command(args.sweep, args.from_runs, args.seeds, args.overrides, args.members),
        "compare": lambda: compare_command(args.runs, args.last, args.artifacts_root, args.output_dir, args.ref),
        "evaluate": lambda: evaluate_command(args.run_dir, args.data, args.text_column, args.label_column, args.name,
                                             args.delimiter, args.encoding),
        "predict": lambda: predict_command(args.run_dir, args.text, args.input, args.output, args.text_column,
                                           args.batch_size, args.runtime, args.text_pair, args.delimiter,
                                           args.encoding),
        "export": lambda: export_command(args.run_dir, args.export_format, args.checkpoint, args.output),
        "errors": lambda: errors_command(args.run_dir, args.split, args.n),
    }
    return run_command(commands[args.command], args.debug)


def config_argument(args: argparse.Namespace) -> str:
    """The config file train reads: --config, or the config.json of the run named by --from-run."""
    if args.from_run is None:
        return args.config or DEFAULT_CONFIG
    if args.config is not None:
        raise UserInputError("give --config or --from-run, not both: --from-run RUN_DIR trains with RUN_DIR/config.json")
    from finetune_pipeline.experiments.sweep import run_config_file

    return str(run_config_file(Path(args.from_run)))


# The heavy imports (torch, transformers) happen inside the commands, so that `--help` answers at once.
def train_command(config_path: str, assignments: list[str], dry_run: bool, resume: str | None = None,
                  force: bool = False) -> None:
    from finetune_pipeline.core.config import load_config, parse_overrides
    from finetune_pipeline.runs.resume import newest_unfinished_run
    from finetune_pipeline.runs.preparation import dry_run as plan_run
    from finetune_pipeline.runs.run import resume_training, run_training
    from finetune_pipeline.runtime.run_log import configure_console_logging

    configure_console_logging()
    overrides = parse_overrides(assignments)
    if resume is not None:
        if under_torchrun():
            raise UserInputError("--resume under torchrun is not supported yet: resume a torchrun run with "
                                 "torchrun as a new run, or train it in one process")
        if overrides or dry_run:
            raise UserInputError("--resume continues a run with the config it started with: drop --set and --dry-run")
        if force and not resume:
            raise UserInputError("--force needs the run folder named: --resume RUN_DIR --force")
        run_dir = Path(resume) if resume else newest_unfinished_run(Path(load_config(config_path).output.artifacts_root))
        print_summary(resume_training(run_dir, force))
        return
    if force:
        raise UserInputError("--force goes with --resume RUN_DIR")
    config = load_config(config_path, overrides)
    from finetune_pipeline.errors import OutOfMemory
    from finetune_pipeline.runs.memory_check import add_rerun_command, out_of_memory
    from finetune_pipeline.runtime import distributed

    try:
        if dry_run:
            plan = plan_run(config)
            print(format_plan(plan))
            if not plan["fits_in_memory"]:
                raise out_of_memory(config, "predicted by the dry run", "the heaviest step does not fit (see above)")
            return
        run_dir = run_training(config, origin={"config_file": config_path, "overrides": overrides})
    except OutOfMemory as error:
        raise add_rerun_command(error, config_path, overrides) from None
    if distributed.launched().is_main:  # under torchrun, rank 0 alone reports
        print_summary(run_dir)


def print_summary(run_dir: Path) -> None:
    from finetune_pipeline.runs.artifacts import METRICS_FILE
    from finetune_pipeline.runs.baselines import summary_lines
    from finetune_pipeline.runs.run_metrics import RunMetrics

    print("\n".join([*summary_lines(RunMetrics.read(run_dir / METRICS_FILE)), f"run folder: {run_dir}"]))


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def format_plan(plan: dict[str, Any]) -> str:
    from finetune_pipeline.core.leakage import describe_leakage
    from finetune_pipeline.runs.baselines import describe_baselines

    precision = plan["mixed_precision"]
    training = plan["config"]["training"]
    sizes = plan["split_sizes"]
    preflight = plan["preflight"]
    lines = [
        "effective config:",
        json.dumps(plan["config"], indent=2, ensure_ascii=False),
        f"device: {plan['device']}; mixed precision: {precision['requested']} -> {precision['used']}"
        + (f" ({precision['reason']})" if precision["reason"] else ""),
        "data: " + "; ".join(f"{split} {source}" for split, source in plan["data_sources"].items()),
        f"splits: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; "
        f"{'target' if plan['task'] == 'regression' else 'labels'}: {', '.join(plan['label_names'])}"
        + ("" if plan["task"] == "single_label" else f" (task {plan['task']})"),
        ("target per split: " if plan["task"] == "regression" else "labels per split (examples): ") + "; ".join(
            f"{split} " + ", ".join(f"{label} {count:.4g}" if isinstance(count, float) else f"{label} {count}"
                                    for label, count in counts.items())
            for split, counts in plan["label_distribution"].items()),
        *(["class weights in the loss: " + ", ".join(f"{label} {weight:.3g}"
                                                      for label, weight in plan["class_weights"].items())]
          if plan["class_weights"] else []),
        *([f"WARNING: {plan['imbalance_warning']}"] if plan["imbalance_warning"] else []),
        describe_leakage(plan["leakage"]),
        *(f"WARNING: {warning}" for warning in plan["leakage"]["warnings"]),
        f"baselines ({training['metric']} without reading the text): "
        f"{describe_baselines(plan['baselines'], training['metric'])}",
        f"token lengths before truncation (max_length {plan['config']['data']['max_length']}):",
        *(f"  {name}: mean {stats['mean']:.1f}, median {stats['p50']:.0f}, p95 {stats['p95']:.0f}, "
          f"max {stats['max']}; truncated {stats['truncated']} ({stats['truncated_share']:.1%})"
          for name, stats in plan["token_lengths"].items()),
        "tokens per word: " + ", ".join(f"{name} {stats['tokens_per_word']:.2f}"
                                        for name, stats in plan["tokenization"].items())
        + f"; unknown tokens in train {plan['tokenization']['train']['unknown_token_share']:.1%} "
          f"({plan['tokenization']['train']['script'].capitalize()} script)",
        *([f"WARNING: {plan['language_warning']}"] if plan["language_warning"] else []),
        f"optimizer steps: {plan['optimizer_steps_per_epoch']} per epoch x {training['epochs']} epochs = "
        f"{plan['optimizer_steps_total']} (effective batch {plan['effective_batch_size']} = batch "
        f"{training['batch_size']} x accumulation {training['gradient_accumulation_steps']})",
        f"backbone: {plan['backbone']}",
        f"preflight, {preflight['what']} on the {preflight['examples']} longest texts "
        f"({preflight['padded_length']} tokens): peak {preflight['peak_mb']:,.0f} MiB + "
        f"{preflight['optimizer_state_mb']:,.0f} MiB optimizer state = {preflight['predicted_peak_mb']:,.0f} MiB "
        f"of {preflight['available_mb']:,.0f} MiB available: {'fits' if plan['fits_in_memory'] else 'DOES NOT FIT'}",
    ]
    return "\n".join(lines)


def prepare_data_command(output_dir: str | None, force: bool) -> None:
    from finetune_pipeline.core.default_dataset import DEFAULT_DATA_DIR, prepare_default_dataset

    prepare_default_dataset(output_dir or DEFAULT_DATA_DIR, force=force)


def new_experiment_command(name: str, source: str, assignments: list[str]) -> None:
    from finetune_pipeline.core.config import parse_overrides, write_new_experiment

    path, changes = write_new_experiment(CONFIGS_DIR, name, source, parse_overrides(assignments))
    print(f"wrote {path}")
    if not changes:
        print(f"warning: it has the same values as {source}; add --set KEY=VALUE to change one")
    for key, (old, new) in changes.items():
        print(f"  {key}: {json.dumps(old, ensure_ascii=False)} -> {json.dumps(new, ensure_ascii=False)}")
    print(f"train it: finetune train --config {path}   (or: python finetune_pipeline/scripts/train.py --config "
          f"{path})")


def sweep_command(name_or_path: str | None, from_runs: list[str], seeds: list[int] | None,
                  assignments: list[str], members: list[str] | None = None) -> int:
    from finetune_pipeline.core.config import parse_overrides
    from finetune_pipeline.experiments.compare import compare_runs, print_comparison
    from finetune_pipeline.experiments.sweep import plan_sweep, run_sweep
    from finetune_pipeline.runtime.run_log import configure_console_logging

    configure_console_logging()
    if under_torchrun():
        raise UserInputError("finetune sweep under torchrun is not supported yet: run the sweep in one process, "
                             "or start each member with torchrun as its own `finetune train --set ...`")
    sweep = plan_sweep(name_or_path, [Path(run_dir) for run_dir in from_runs], seeds, parse_overrides(assignments),
                       ("finetune sweep A", "finetune sweep --from-run RUN_DIR --seeds 43,44"), members)
    sweep_dir = run_sweep(sweep)
    run_dirs = [Path(member.run_dir) for member in sweep.members if member.run_dir]
    if run_dirs:
        print_comparison(compare_runs(run_dirs, sweep_dir))
    failed = [member for member in sweep.members if member.status != "completed"]
    for member in failed:
        print(f"member {member.name} (seed {member.seed}) failed: {member.error}", file=sys.stderr)
    print(f"sweep folder: {sweep_dir} ({len(sweep.members) - len(failed)} of {len(sweep.members)} members completed)")
    return EXIT_SWEEP_HAD_FAILURES if failed else 0


def compare_command(targets: list[str], last: int | None, artifacts_root: str, output_dir: str | None,
                    reference: str | None = None) -> None:
    from finetune_pipeline.experiments.compare import compare_runs, print_comparison
    from finetune_pipeline.experiments.run_selection import comparison_dir, resolve_run_dirs

    if not targets and last is None:
        raise UserInputError("compare: name run or sweep folders, a glob, or --last N")
    run_dirs = resolve_run_dirs(targets, last, Path(artifacts_root), reference)
    output = comparison_dir(targets, Path(artifacts_root)) if output_dir is None else Path(output_dir)
    comparison = compare_runs(run_dirs, output, reference_given=reference is not None)
    print_comparison(comparison)


def evaluate_command(run_dir: str, data: str, text_column: str | None, label_column: str | None,
                     name: str | None, delimiter: str | None = None, encoding: str | None = None) -> None:
    from finetune_pipeline.core.config import TASK_METRICS
    from finetune_pipeline.serving.inference import evaluate_file

    metrics, path = evaluate_file(Path(run_dir), Path(data), text_column, label_column, name, delimiter=delimiter,
                                  encoding=encoding)
    scores = ", ".join(f"{metric} {metrics[metric]:.4f}" for metric in TASK_METRICS[metrics["task"]])
    print(f"{data}: {metrics['examples']} examples; {scores}")
    absent = [label for label, row in metrics.get("per_class", {}).items() if row["support"] == 0]
    if absent and "macro_f1" in metrics:
        print(f"note: {len(absent)} of the run's {len(metrics['per_class'])} labels never occur in this file "
              f"({', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}); macro-F1 averages over every label "
              "the run knows, and each of these counts as F1 0 in it (accuracy and the other labels' rows are "
              "unaffected)")
    print(f"written to {path}")


def errors_command(run_dir: str, split: str, count: int) -> None:
    from finetune_pipeline.runs.mistakes import kept_mistakes
    from finetune_pipeline.runs.run_record import read_run_files

    metrics, _ = read_run_files(Path(run_dir), "errors")
    record = (metrics.mistakes or {}).get(split, {})
    mistakes = kept_mistakes(metrics.mistakes, split, count, run_dir)
    print(f"{split}: {record.get('wrong', 0)} wrong answers; the {len(mistakes)} the model was surest of:")
    for number, mistake in enumerate(mistakes, start=1):
        text = mistake["text"] + (f" / {mistake['text_pair']}" if "text_pair" in mistake else "")
        details = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in mistake.items() if key not in ("text", "text_pair", "line"))
        print(f"{number:>3}. line {mistake['line']}: {details}\n     {text}")
    if record.get("confusions"):
        print("most frequent confusions: " + "; ".join(
            ", ".join(f"{key} {value}" for key, value in confusion.items()) for confusion in record["confusions"]))


def predict_command(run_dir: str, texts: list[str] | None, input_file: str | None, output_file: str | None,
                    text_column: str | None, batch_size: int, runtime: str, pairs: list[str] | None = None,
                    delimiter: str | None = None, encoding: str | None = None) -> None:
    from finetune_pipeline.serving.inference import predict_file, predict_texts

    if texts:
        for prediction in predict_texts(Path(run_dir), texts, batch_size, runtime=runtime, pairs=pairs):
            print("\t".join([readable_prediction(prediction.label), *(
                [f"({', '.join(f'{label} {p:.3f}' for label, p in prediction.probabilities.items())})"]
                if prediction.probabilities is not None else []), prediction.text,
                *([prediction.text_pair] if prediction.text_pair is not None else [])]))
        return
    if pairs:
        raise UserInputError("--text-pair goes with --text; with --input the pairs come from the run's "
                             "data.text_pair_column in the file")
    if not output_file:
        raise UserInputError("predict --input needs --output, the .csv or .jsonl file to write the predictions to")
    written = predict_file(Path(run_dir), Path(input_file), Path(output_file), text_column, batch_size,
                           runtime=runtime, delimiter=delimiter, encoding=encoding)
    print(f"labelled {written.labelled} texts: {output_file}")
    if written.unlabelled:
        lines = ", ".join(map(str, written.unlabelled[:10])) + (" ..." if len(written.unlabelled) > 10 else "")
        print(f"warning: {len(written.unlabelled)} row(s) with an empty text left unlabelled (their prediction "
              f"columns are empty): line(s) {lines} of {input_file}", file=sys.stderr)


def readable_prediction(label: Any) -> str:
    """A class, the list of labels ('joy|love', '(none)'), or a number."""
    if isinstance(label, list):
        return "|".join(label) or "(none)"
    return f"{label:.4f}" if isinstance(label, float) else str(label)


def export_command(run_dir: str, export_format: str, checkpoint: str, output: str | None) -> None:
    from finetune_pipeline.serving.export import export_run

    for name, folder in export_run(Path(run_dir), export_format, checkpoint,
                                   None if output is None else Path(output)).items():
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        print(f"{name}: {folder} ({size / 2**20:,.1f} MiB)" + measured_line(folder))


def measured_line(folder: Path) -> str:
    """An ONNX folder's score on the run's test split, and the float32 graph's before an int8 one was quantized."""
    from finetune_pipeline.serving.onnx_folder import INFO_FILE

    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8")) if (folder / INFO_FILE).is_file() else {}
    measured, before = info.get("measured_through_export"), info.get("measured_before_quantization")
    if not measured:
        return ""
    metric = next(key for key in measured if key != "test_examples")
    return (f"; test {metric} through it {measured[metric]:.4f}"
            + (f" (float32 before quantizing: {before[metric]:.4f})" if before else ""))


def run_command(command: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command; whatever escapes it becomes one message on stderr (no traceback) and an exit code:
    2 bad input, 3 out of memory, 4 a loss that became NaN, 5 the machine refused (a full disk, no permission),
    70 a bug in this package, 130 Ctrl-C. debug (--debug or FINETUNE_DEBUG=1) adds the traceback."""
    debug = debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        return command() or 0
    except KeyboardInterrupt as interruption:
        run_dir = getattr(interruption, "run_dir", None)  # set by the run it stopped, if one had started
        from finetune_pipeline.runs.run_folder import continue_advice  # a run was started: its modules are loaded

        how = (continue_advice(run_dir) if run_dir is not None
               else "a run folder can be continued with `finetune train --resume RUN_DIR`")
        print(f"interrupted ({interruption or 'SIGINT'}): every file written so far is complete; {how}",
              file=sys.stderr)
        return getattr(interruption, "exit_code", EXIT_INTERRUPTED)
    except Exception as error:
        if debug:
            traceback.print_exc()
        known = (error if isinstance(error, UserInputError)
                 else system_fault(error) if isinstance(error, OSError) else None)
        if known is None:
            print(f"error: a bug in finetune_pipeline stopped the command: {type(error).__name__}: {error}\n"
                  f"Run it again with `finetune --debug ...` (or {DEBUG_VARIABLE}=1) to see where, and report it "
                  "with that output", file=sys.stderr)
        else:
            print(f"error: {known}", file=sys.stderr)
        run_dir = getattr(error, "run_dir", None)
        if run_dir is not None:
            print(f"what the run wrote is in {run_dir}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR if known is None else known.exit_code


def train_script_main() -> int:
    """Entry for scripts/train.py, which the students' guide runs as `train.py --config ...`."""
    parser = Parser(prog="train.py", description="Train as a JSON config says.")
    add_train_arguments(parser)
    add_debug_argument(parser)
    args = parser.parse_args()
    return run_command(lambda: train_command(config_argument(args), args.overrides, args.dry_run, args.resume,
                                             args.force), args.debug)


if __name__ == "__main__":
    sys.exit(main())
