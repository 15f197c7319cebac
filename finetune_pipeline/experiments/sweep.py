"""Sweeps: one base config, a list or grid of changes, run one after another with the same seed(s).

A sweep file is plain JSON that a student can read and copy (the guide's experiments A-F ship as
finetune_pipeline/configs/experiments/A.json ... F.json):

    {
      "description": "C: head tuning",
      "base": "../train_config.json",           # a config file, relative to this sweep file
      "set": {"training.epochs": 3},            # optional: changes for every member
      "grid": {"model.hidden_dim": [128, 256, 512], "model.dropout": [0.1, 0.2, 0.3]},
      "seeds": [42]                             # optional: default, the base config's seed
    }

`finetune sweep --from-run RUN_DIR ... --seeds 43,44` builds a sweep from finished runs instead: each
run's own config.json, with each seed (sweep_from_runs).

Instead of "grid" (every combination), "members" lists the changes one by one:
`[{"name": "max_length=384", "set": {"data.max_length": 384}}, ...]`. Keys are the dotted config keys
of `--set`. The members run in one process, so the backbone and tokenizer are read from disk once,
and members that change only the head or the optimisation reuse the cached features.
"""

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune_pipeline.core.config import (
    apply_overrides,
    changed_values,
    config_from_dict,
    config_settings,
    read_config_file,
)
from finetune_pipeline.errors import OutOfMemory, UserInputError
from finetune_pipeline.runs import artifacts
from finetune_pipeline.runtime import files
from finetune_pipeline.runtime.run_log import log_event

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "experiments"  # finetune_pipeline/configs/
SWEEP_FILE = "sweep.json"
SWEEP_KEYS = {"description", "base", "set", "grid", "members", "seeds"}


@dataclass
class Member:
    name: str
    overrides: dict[str, Any]  # on top of the base config and the sweep's "set"
    seed: int
    status: str = "pending"  # pending -> completed | failed | interrupted
    run_dir: str | None = None
    error: str | None = None
    seconds: float | None = None


@dataclass
class Sweep:
    name: str
    source: str  # the sweep file
    description: str
    base_config: dict[str, Any]  # the base file with the sweep's and the command line's "set" applied
    members: list[Member] = field(default_factory=list)


def plan_sweep(preset_or_file: str | None, from_runs: list[Path], seeds: list[int] | None,
               overrides: dict[str, Any], how: tuple[str, str], members: list[str] | None = None) -> Sweep:
    """A sweep from a preset or sweep file, or from runs to rerun (with seeds): one of the two. how: the two ways
    as the caller's user writes them, for the message (the command line's or the Python API's); members: only
    these of the sweep file's members, by name."""
    if (preset_or_file is None) == (not from_runs):
        raise UserInputError(f"sweep: name a preset or sweep file ({how[0]}), or runs to rerun ({how[1]}), one of the "
                             "two")
    if from_runs:
        if members:
            raise UserInputError("sweep: members are chosen among a preset's or sweep file's members; with runs to "
                                 "rerun, name just the runs you want")
        return sweep_from_runs(from_runs, seeds, overrides)
    return load_sweep(resolve_sweep_file(str(preset_or_file)), seeds, overrides, members)


def resolve_sweep_file(name_or_path: str) -> Path:
    """'C' (or 'c') -> the shipped preset C.json; anything else is a sweep file's path or a preset's name."""
    for name in (name_or_path.upper(), name_or_path):
        preset = PRESETS_DIR / f"{name}.json"
        if "/" not in name and preset.is_file():
            return preset
    path = Path(name_or_path)
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json")))
        raise UserInputError(f"sweep '{name_or_path}': neither a preset ({presets}) nor a sweep file")
    return path


def load_sweep(path: Path, seeds: list[int] | None, extra_overrides: dict[str, Any],
               chosen: list[str] | None = None) -> Sweep:
    """Read a sweep file and expand it into members, one per change and seed (seed-major order); chosen: only the
    members of these names."""
    spec = read_config_file(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise UserInputError(f"sweep {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    if "base" not in spec:
        raise UserInputError(f"sweep {path}: needs \"base\", the path of a config file relative to the sweep file")
    changes = member_changes(spec, path)
    if chosen:
        names = [name for name, _ in changes]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise UserInputError(f"sweep {path}: no member {', '.join(map(repr, unknown))}; its members: "
                                 f"{', '.join(names)}")
        changes = [(name, overrides) for name, overrides in changes if name in chosen]
    clashing = sorted(set(extra_overrides) & {key for _, overrides in changes for key in overrides})
    if clashing:
        raise UserInputError(f"--set {', '.join(clashing)}: the sweep itself varies these keys; run one member "
                             "with its value (finetune sweep NAME --member MEMBER), or change them in a copy of the "
                             "sweep file")
    base = apply_overrides(read_config_file(path.parent / spec["base"]), {**spec.get("set", {}), **extra_overrides})
    base_seed = config_from_dict(base, f"sweep {path}, base config").seed  # a bad base fails the whole sweep now
    seeds = seeds or spec.get("seeds") or [base_seed]
    sweep = Sweep(path.stem, str(path), spec.get("description", ""), base)
    sweep.members = [Member(name, overrides, seed) for seed in seeds for name, overrides in changes]
    return sweep


def sweep_from_runs(run_dirs: list[Path], seeds: list[int] | None, extra_overrides: dict[str, Any]) -> Sweep:
    """Rerun finished runs with their own effective configs (their config.json), with each seed: the way to
    measure seed noise on exactly the runs being compared. No seeds: each run's own seed (a repeat)."""
    configs = [read_config_file(run_config_file(run_dir)) for run_dir in run_dirs]
    base = configs[0]
    members = []
    changed = f" with {member_name(extra_overrides)}" if extra_overrides else ""  # the name says what --set did
    for run_dir, config in zip(run_dirs, configs, strict=True):
        settings = changed_values(config_settings(base), config_settings(config))
        differences = {key: new for key, (_, new) in settings.items()
                       if key != "seed" and not overridden(key, extra_overrides)}
        members.append((f"{Path(run_dir).name}{changed}", differences, config.get("seed")))
    sweep = Sweep("from-run", ", ".join(map(str, run_dirs)), "the runs' own configs, rerun with other seeds",
                  apply_overrides(base, extra_overrides))
    config_from_dict(sweep.base_config, f"--from-run {run_dirs[0]} with --set")  # a bad --set fails the sweep now
    if seeds:
        sweep.members = [Member(name, overrides, seed) for seed in seeds for name, overrides, _ in members]
    else:
        sweep.members = [Member(name, overrides, own_seed) for name, overrides, own_seed in members]
    return sweep


def overridden(key: str, overrides: dict[str, Any]) -> bool:
    """--set decides key: it sets key itself, or a part of it (model.lora.r within model.lora)."""
    return any(name == key or name.startswith(f"{key}.") for name in overrides)


def run_config_file(run_dir: Path) -> Path:
    """A run folder's effective config, which is a complete config file."""
    path = Path(run_dir) / artifacts.CONFIG_FILE
    if not path.is_file():
        raise UserInputError(f"{run_dir}: no {artifacts.CONFIG_FILE} there, so not a run to rerun; give a run folder "
                             "such as "
                             "finetune_pipeline/artifacts/20261124-120000")
    return path


def member_changes(spec: dict[str, Any], path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) per member, from "grid" (every combination) or "members" (as listed)."""
    if ("grid" in spec) == ("members" in spec):
        raise UserInputError(f"sweep {path}: give either \"grid\" or \"members\", not both and not neither")
    if "grid" in spec:
        grid = spec["grid"]
        if not grid or not all(isinstance(values, list) and values for values in grid.values()):
            raise UserInputError(f"sweep {path}: \"grid\" maps each key to a non-empty list of values")
        combinations = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        return [(member_name(overrides), overrides) for overrides in combinations]
    members = spec["members"]
    if not isinstance(members, list) or not members:
        raise UserInputError(f"sweep {path}: \"members\" is a non-empty list of {{\"name\": ..., \"set\": {{...}}}}")
    return [(entry.get("name") or member_name(entry.get("set", {})), entry.get("set", {})) for entry in members]


def member_name(overrides: dict[str, Any]) -> str:
    """{'model.hidden_dim': 128, 'model.dropout': 0.1} -> 'hidden_dim=128,dropout=0.1'."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={json.dumps(value)}" for key, value in overrides.items()) or "base"


def run_sweep(sweep: Sweep) -> Path:
    """Run every member in turn; a member that fails is recorded and the sweep goes on.

    Returns the sweep folder, whose sweep.json lists each member's run folder and status.
    """
    from finetune_pipeline.core.model import keep_loaded_backbones
    from finetune_pipeline.runs.memory_check import add_rerun_command
    from finetune_pipeline.runs.run import run_training

    root = Path(config_from_dict(sweep.base_config, sweep.source).output.artifacts_root)
    sweep_dir = artifacts.create_run_dir(root / "sweeps", suffix=f"-{sweep.name}")
    started = time.perf_counter()
    with keep_loaded_backbones():
        for position, member in enumerate(sweep.members, start=1):
            log_progress(sweep, position, started)
            member_started = time.perf_counter()
            try:
                config = config_from_dict(apply_overrides(sweep.base_config, {**member.overrides, "seed": member.seed}),
                                          source=f"sweep {sweep.source}, member {member.name}")
                origin = {"sweep": str(sweep_dir), "sweep_member": member.name, "overrides": member.overrides}
                member.run_dir = str(run_training(config, origin))
                member.status = "completed"
            except KeyboardInterrupt:
                member.status = "interrupted"
                raise
            except UserInputError as error:  # bad value, out of memory, diverged: recorded, not fatal
                if isinstance(error, OutOfMemory):  # a member has no config file: it reruns from its run folder
                    error = add_rerun_command(error, config_file=None, overrides={})
                member.status, member.error = "failed", str(error)
                member.run_dir = None if error.run_dir is None else str(error.run_dir)
                log_event("sweep_member_failed", level=logging.WARNING, member=member.name, error=str(error))
            finally:
                member.seconds = time.perf_counter() - member_started
                write_sweep_record(sweep_dir, sweep)
    return sweep_dir


def log_progress(sweep: Sweep, position: int, started: float) -> None:
    """'member 3 of 9: hidden_dim=128 (seed 42); elapsed 1m12s, about 3m40s left'."""
    done = [member.seconds for member in sweep.members[: position - 1] if member.seconds is not None]
    elapsed = time.perf_counter() - started
    remaining = (f"about {format_duration(sum(done) / len(done) * (len(sweep.members) - position + 1))} left"
                 if done else "time left unknown until the first member ends")
    member = sweep.members[position - 1]
    log_event("sweep_member", sweep=sweep.name, position=f"{position}/{len(sweep.members)}", member=member.name,
              seed=member.seed, elapsed=format_duration(elapsed), remaining=remaining)


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def write_sweep_record(sweep_dir: Path, sweep: Sweep) -> None:
    files.write_json(sweep_dir / SWEEP_FILE, {
        "name": sweep.name,
        "source": sweep.source,
        "description": sweep.description,
        "base_config": sweep.base_config,
        "members": [asdict(member) for member in sweep.members],
    })
