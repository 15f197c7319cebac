"""`finetune compare`: loss stability, the fairness warnings, seed groups, the written files and which runs are found.

Most tests write run folders by hand (metrics.json, config.json, train.log): the logic needs no training.
One test compares real runs of the tiny BERT, which checks the fields that run_training records.
"""

import csv
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from finetune_pipeline.errors import UserInputError
from finetune_pipeline.experiments.compare import compare_runs, print_comparison
from finetune_pipeline.experiments.run_selection import default_output_dir, resolve_run_dirs
from finetune_pipeline.experiments.seed_noise import (
    BELOW_RESOLUTION,
    BEYOND_NOISE,
    NOISE_UNKNOWN,
    REFERENCE,
    WITHIN_NOISE,
)
from finetune_pipeline.experiments.stability import loss_stability
from finetune_pipeline.runs.run import run_training
from tests.conftest import deep_merge, without_score_flags

DATA_SHA = {"train": "a" * 64, "val": "b" * 64, "test": "c" * 64}
BACKBONE_SHA = "d" * 64
CODE_VERSION = {"package": "0.1.0", "git_commit": "1234567", "git_dirty": False}
STEADY_LOSSES = [1.0 / (1 + step) for step in range(20)]


# ---- loss stability --------------------------------------------------------------------------------------------


def test_stability_follows_the_definition_on_the_second_half():
    # second half [1.0, 1.1, 1.0, 1.1]: changes +0.1, -0.1, +0.1, population std 0.0943, mean loss 1.05
    stability = loss_stability([9.0, 5.0, 3.0, 2.0, 1.0, 1.1, 1.0, 1.1])
    assert stability.value == pytest.approx(0.0942809 / 1.05, rel=1e-5)
    assert stability.flag == "steady"


def test_a_noisy_curve_is_less_steady_than_a_smooth_one():
    noisy = [loss + (0.05 if step % 2 else -0.05) for step, loss in enumerate(STEADY_LOSSES)]
    steady, jittery = loss_stability(STEADY_LOSSES), loss_stability(noisy)
    assert steady.flag == jittery.flag == "steady"
    assert 0 < steady.value < jittery.value


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_inf_loss_is_diverged(bad):
    for losses in ([*STEADY_LOSSES[:5], bad, *STEADY_LOSSES[5:]], [*STEADY_LOSSES, bad], [bad]):
        stability = loss_stability(losses)
        assert (stability.value, stability.flag) == (None, "diverged")


def test_a_loss_that_goes_up_at_the_end_is_rising():
    # last quarter [0.7, 0.8] has mean 0.75, more than 10% above the quarter before it, [0.6, 0.6]
    assert loss_stability([1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.7, 0.8]).flag == "rising"
    assert loss_stability([1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.64, 0.65]).flag == "steady"  # 7.5% above: not rising


@pytest.mark.parametrize("count", [0, 1, 6])
def test_fewer_than_four_losses_in_the_second_half_is_too_short(count):
    stability = loss_stability(STEADY_LOSSES[:count])
    assert (stability.value, stability.flag) == (None, "too short")


def test_seven_losses_are_enough():
    assert loss_stability(STEADY_LOSSES[:7]).flag == "steady"  # the second half holds 4 of them


# ---- synthetic run folders -------------------------------------------------------------------------------------


NO_OVERLAP = {"exact": 0, "normalised": 0, "examples": []}
NO_LEAKAGE = {"train_repeats": NO_OVERLAP, "val_in_train": NO_OVERLAP, "test_in_train": NO_OVERLAP,
              "label_conflicts": {"texts": 0, "examples": []}, "warnings": []}


def write_run(folder: Path, *, seed: int = 42, config: dict[str, Any] | None = None, best_val: float = 0.80,
              test: float = 0.78, status: str = "completed", losses: list[float] = STEADY_LOSSES,
              **metrics_overrides: Any) -> Path:
    """A run folder as run_training leaves it, with only the files and fields that compare reads."""
    folder.mkdir(parents=True)
    base_config = {
        "seed": seed,
        "data": {"train_file": "data/train.csv", "val_file": "data/val.csv", "test_file": "data/test.csv",
                 "max_length": 32},
        "model": {"backbone": "tiny-bert", "hidden_dim": 16, "dropout": 0.0},
        "training": {"learning_rate": 0.01, "epochs": 2},
        "output": {"artifacts_root": "artifacts", "cache_dir": "cache"},
    }
    metrics = {
        "status": status, "metric": "accuracy", "best_val_score": best_val, "best_epoch": 2, "test_score": test,
        "wall_time_s": 12.5, "epoch_times_s": [5.0, 6.0], "peak_memory_mb": {"process_rss": 700.0}, "seed": seed,
        "data_files": {split: {"path": f"data/{split}.csv", "sha256": sha} for split, sha in DATA_SHA.items()},
        "backbone_sha256": BACKBONE_SHA, "code_version": CODE_VERSION, "device": "cpu",
        "mixed_precision": {"requested": "fp16", "used": "bf16", "reason": "fp16 autocast on CPU is slow"},
        "leakage": NO_LEAKAGE,
        **metrics_overrides,
    }
    (folder / "config.json").write_text(json.dumps(deep_merge(base_config, config or {})))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    steps = [f"2026-11-24 11:40:{index:02d} event=step epoch=1 step={index + 1} loss={loss} lr_head=0.001"
             for index, loss in enumerate(losses)]
    epochs = [f"2026-11-24 11:41:00 event=epoch epoch=1 val_score={best_val}"]
    (folder / "train.log").write_text("\n".join(steps + epochs) + "\n")
    return folder


def compare(tmp_path: Path, *run_dirs: Path):
    return compare_runs(list(run_dirs), tmp_path / "comparison")


def test_one_factor_same_seed_data_backbone_and_code_gives_no_warning(tmp_path):
    reference = write_run(tmp_path / "20261124-100000")
    changed = write_run(tmp_path / "20261124-110000", config={"model": {"hidden_dim": 32}}, best_val=0.82)
    comparison = compare(tmp_path, reference, changed)
    assert comparison.warnings == []
    assert [row.differences for row in comparison.rows] == [{}, {"model.hidden_dim": (16, 32)}]
    row = comparison.rows[1]
    assert (row.label, row.best_val_score, row.mean_epoch_time_s, row.peak_rss_mb, row.seed) == (
        "20261124-110000", 0.82, 5.5, 700.0, 42)
    assert row.stability.flag == "steady"


def test_two_factors_are_a_warning_naming_both(tmp_path):
    reference = write_run(tmp_path / "base")
    changed = write_run(tmp_path / "changed", config={"model": {"hidden_dim": 32, "dropout": 0.1}})
    [warning] = compare(tmp_path, reference, changed).warnings
    assert "run changed differs from the reference base in 2 factors" in warning
    assert "model.hidden_dim: 16 → 32" in warning and "model.dropout: 0.0 → 0.1" in warning
    assert "does not isolate one effect" in warning


def test_a_different_seed_is_a_warning(tmp_path):
    reference = write_run(tmp_path / "base", seed=42)
    changed = write_run(tmp_path / "changed", seed=43, config={"training": {"learning_rate": 0.02}})
    [warning] = compare(tmp_path, reference, changed).warnings
    assert warning.startswith("seeds differ: changed ran with seed 43, the reference base with seed 42")


def test_a_different_data_file_is_a_warning_naming_the_split(tmp_path):
    reference = write_run(tmp_path / "base")
    other_val = {**{split: {"sha256": sha} for split, sha in DATA_SHA.items()}, "val": {"sha256": "e" * 64}}
    changed = write_run(tmp_path / "changed", data_files=other_val)
    [warning] = compare(tmp_path, reference, changed).warnings
    assert warning.startswith("data differs: run changed vs the reference base: "
                              "val: bbbbbbbbbbbb… → eeeeeeeeeeee…")
    assert "train:" not in warning and "test:" not in warning


def test_another_backbone_and_another_code_version_are_warnings(tmp_path):
    reference = write_run(tmp_path / "base")
    backbone = write_run(tmp_path / "backbone", backbone_sha256="f" * 64)
    code = write_run(tmp_path / "code", code_version={**CODE_VERSION, "git_commit": "7654321"})
    warnings = compare(tmp_path, reference, backbone, code).warnings
    assert len(warnings) == 2
    assert warnings[0].startswith("backbone differs: run backbone vs the reference base: backbone_sha256: dddd")
    assert warnings[1].startswith("code version differs: run code vs the reference base: "
                                  "git_commit: 1234567 → 7654321")


def test_the_code_is_compared_by_its_source_hash_when_runs_have_one(tmp_path):
    with_hash = {**CODE_VERSION, "source_sha256": "c" * 64}
    reference = write_run(tmp_path / "base", code_version=with_hash)
    docs_commit = write_run(tmp_path / "docs", code_version={**with_hash, "git_commit": "7654321"})
    edited = write_run(tmp_path / "edited", code_version={**with_hash, "source_sha256": "e" * 64})
    [warning] = compare(tmp_path, reference, docs_commit, edited).warnings
    assert warning.startswith("code version differs: run edited vs the reference base ×2: source_sha256: cccc")


def test_keys_a_frozen_backbone_ignores_are_not_factors(tmp_path):
    frozen = {"training": {"freeze_backbone": True, "encoder_learning_rate": 2e-5}}
    reference = write_run(tmp_path / "base", config=frozen)
    same = write_run(tmp_path / "same", config={"training": {"freeze_backbone": True, "encoder_learning_rate": 1e-3,
                                                             "gradient_checkpointing": True}})
    trained = write_run(tmp_path / "trained", config={"training": {"freeze_backbone": False,
                                                                   "encoder_learning_rate": 1e-5}})
    comparison = compare(tmp_path, reference, same, trained)
    assert [row.differences for row in comparison.rows[1:]] == [{}, {"training.freeze_backbone": (True, False)}]
    assert comparison.warnings == []
    # while the backbone trains, its learning rate is a factor like any other
    both_trained = [write_run(tmp_path / name, config={"training": {"freeze_backbone": False,
                                                                   "encoder_learning_rate": lr}})
                    for name, lr in (("lr1", 1e-5), ("lr2", 2e-5))]
    assert compare(tmp_path, *both_trained).rows[1].differences == {"training.encoder_learning_rate": (1e-5, 2e-5)}


def test_another_precision_actually_used_is_a_warning(tmp_path):
    reference = write_run(tmp_path / "base")
    fp32 = write_run(tmp_path / "fp32", mixed_precision={"requested": "fp16", "used": "no", "reason": "no bf16"})
    [warning] = compare(tmp_path, reference, fp32).warnings
    assert warning.startswith("device or precision differs: run fp32 vs the reference base: "
                              "precision used: bf16 → no")


def test_runs_without_provenance_say_once_that_it_could_not_be_checked(tmp_path):
    reference = write_run(tmp_path / "base")
    old = [write_run(tmp_path / name, data_files=None, backbone_sha256=None, code_version=None, mixed_precision=None,
                     leakage=None) for name in ("old1", "old2")]
    warnings = compare(tmp_path, reference, *old).warnings
    assert warnings == [
        f"{what} could not be checked for run(s) old1 ×2: their metrics.json has no {field} "
        "(an older run, or one that stopped early)"
        for what, field in [("data", "data_files"), ("leakage", "leakage"), ("backbone", "backbone_sha256"),
                            ("code version", "code_version"), ("device or precision", "mixed_precision")]
    ]


def test_a_failed_run_with_broken_files_is_shown_with_what_exists(tmp_path):
    reference = write_run(tmp_path / "base")
    failed = write_run(tmp_path / "failed", status="failed", best_val=None, test=None, epoch_times_s=[])
    (failed / "train.log").unlink()
    (failed / "config.json").write_text("{not json")
    comparison = compare(tmp_path, reference, failed)
    row = comparison.rows[1]
    assert (row.status, row.best_val_score, row.differences, row.stability.flag) == ("failed", None, None, "too short")
    assert any(w.startswith("run failed: config.json cannot be read") for w in comparison.warnings)
    assert any(w.startswith("run failed: train.log is missing") for w in comparison.warnings)
    assert any(w.startswith("run failed is failed, not completed") for w in comparison.warnings)
    assert comparison.plot_path.is_file()

    (failed / "metrics.json").unlink()  # a folder named explicitly may have lost even its metrics
    assert compare(tmp_path, reference, failed).rows[1].status == "unknown"


def test_a_sweep_member_is_labelled_by_its_name_and_seed(tmp_path):
    run_dir = write_run(tmp_path / "20261124-100000", sweep_member="hidden_dim=128,dropout=0.1")
    assert compare(tmp_path, run_dir).rows[0].label == "hidden_dim=128,dropout=0.1 (seed 42)"


# ---- seed groups -----------------------------------------------------------------------------------------------


def seed_group_runs(folder: Path, name: str, hidden_dim: int, best_vals: list[float]) -> list[Path]:
    return [write_run(folder / f"{name}-{seed}", seed=seed, best_val=best_val,
                      config={"model": {"hidden_dim": hidden_dim}})
            for seed, best_val in zip((42, 43, 44), best_vals, strict=True)]


def test_seed_groups_flag_a_difference_smaller_than_the_seed_noise(tmp_path):
    reference = seed_group_runs(tmp_path, "ref", 16, [0.80, 0.82, 0.84])  # mean 0.82, std 0.02
    close = seed_group_runs(tmp_path, "close", 32, [0.81, 0.83, 0.85])  # mean 0.83: 0.01 < 0.02
    far = seed_group_runs(tmp_path, "far", 64, [0.90, 0.91, 0.92])  # mean 0.91: 0.09 > 0.02
    comparison = compare(tmp_path, *reference, *close, *far)
    assert comparison.warnings == []  # several seeds per config, the same seeds for each: fair
    groups = comparison.groups
    assert [group.vs_reference for group in groups] == [REFERENCE, WITHIN_NOISE, BEYOND_NOISE]
    assert [group.name for group in groups] == [
        "reference", "model.hidden_dim: 16 → 32", "model.hidden_dim: 16 → 64"]
    assert groups[0].seeds == [42, 43, 44]
    assert groups[0].best_val.mean == pytest.approx(0.82)
    assert groups[0].best_val.std == pytest.approx(0.02)  # sample std, ddof=1
    within, beyond = comparison.notes
    assert within.startswith("model.hidden_dim: 16 → 32 vs the reference: mean best val differs by +0.0100")
    assert WITHIN_NOISE in within and "3 vs 3 seeds" in within
    assert beyond.startswith("model.hidden_dim: 16 → 64 vs the reference: mean best val differs by +0.0900")
    assert BEYOND_NOISE in beyond
    assert "## Seed groups" in comparison.markdown_path.read_text()


def test_one_seed_per_config_means_the_noise_is_unknown(tmp_path):
    reference = write_run(tmp_path / "base")
    changed = write_run(tmp_path / "changed", config={"model": {"hidden_dim": 32}})
    comparison = compare(tmp_path, reference, changed)
    [note] = comparison.notes
    assert note.startswith("seed noise is unknown for the reference (base), model.hidden_dim: 16 → 32")
    # the advice reruns these very runs (their own configs and data), with the seeds they lack
    assert f"`finetune sweep --from-run {reference} --from-run {changed} --seeds 43,44`" in note
    assert f"--ref {reference}" in note
    assert "## Seed groups" not in comparison.markdown_path.read_text()


# ---- the written files and the console -------------------------------------------------------------------------


def test_compare_writes_markdown_csv_and_png_with_the_warnings_first(tmp_path, capsys):
    reference = write_run(tmp_path / "base")
    changed = write_run(tmp_path / "changed", seed=43, config={"model": {"hidden_dim": 32}})
    comparison = compare(tmp_path, reference, changed)

    markdown = comparison.markdown_path.read_text()
    assert markdown.index("**WARNING:** seeds differ") < markdown.index("## Runs")
    assert "| changed | completed | 0.8000 | +0.0000 | 0.7800 | 2 | 12.5 | 5.5 | 700 |" in markdown
    rows = list(csv.DictReader(comparison.csv_path.open()))
    assert [row["run"] for row in rows] == ["base", "changed"]
    assert rows[1]["differs_from_reference"] == "model.hidden_dim: 16 → 32"
    assert rows[1]["seed_group"] == "model.hidden_dim: 16 → 32" and rows[1]["group_best_val_std"] == ""
    assert float(rows[0]["loss_stability"]) == pytest.approx(loss_stability(STEADY_LOSSES).value)
    assert comparison.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(comparison.markdown_path.parent.glob(".*.tmp"))

    print_comparison(comparison)
    printed = capsys.readouterr().out
    assert "1 WARNING(S)" in printed and "WARNING: seeds differ" in printed


def test_default_output_dir_is_a_timestamped_folder_under_comparisons(tmp_path):
    output_dir = default_output_dir(tmp_path)
    assert output_dir.parent == tmp_path / "comparisons"
    assert len(output_dir.name) == len("20261124-120000") and output_dir.name[8] == "-"


def test_real_runs_differing_only_in_paths_and_one_factor_compare_cleanly(make_config, tmp_path):
    """Real run folders: a byte-identical copy of the train file and another artifacts root are not factors."""
    training = {"epochs": 2, "log_every_steps": 1, "freeze_backbone": True}
    reference = run_training(make_config(training=training))
    train_copy = shutil.copy(make_config().data.train_file, tmp_path / "train-copy.csv")
    moved = run_training(make_config(training=training, data={"train_file": str(train_copy)},
                                     output={"artifacts_root": str(tmp_path / "elsewhere")}))
    wider = run_training(make_config(training=training, model={"hidden_dim": 32}))

    comparison = compare_runs([reference, moved, wider], tmp_path / "comparison")
    assert without_score_flags(comparison.warnings) == []
    assert [row.differences for row in comparison.rows] == [{}, {}, {"model.hidden_dim": (16, 32)}]
    assert all(row.stability.value is not None and row.status == "completed" for row in comparison.rows)
    assert len(comparison.groups) == 2  # the reference and the moved copy are one config with one seed
    for path in (comparison.markdown_path, comparison.csv_path, comparison.plot_path):
        assert path.stat().st_size > 0


# ---- which runs ------------------------------------------------------------------------------------------------


def test_resolve_finds_sweep_members_globs_and_the_newest_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sweep records run folders relative to where it ran
    root = Path("artifacts")
    runs = [write_run(root / name) for name in ("20261124-100000", "20261124-110000", "20261124-120000")]
    sweep_dir = root / "sweeps" / "20261124-130000-C"
    sweep_dir.mkdir(parents=True)
    members = [{"name": "a", "run_dir": str(runs[2])}, {"name": "failed", "run_dir": None},
               {"name": "b", "run_dir": str(runs[0].resolve())}]
    (sweep_dir / "sweep.json").write_text(json.dumps({"members": members}))
    (root / "comparisons" / "20261124-140000").mkdir(parents=True)
    (root / "20261124-150000").mkdir()  # a run that stopped before writing metrics.json

    assert resolve_run_dirs([str(sweep_dir)], None, root) == [runs[2], runs[0].resolve()]
    assert resolve_run_dirs(["artifacts/2026*"], None, root) == runs
    assert resolve_run_dirs(["artifacts/sweeps/*"], None, root) == [runs[2], runs[0].resolve()]
    assert resolve_run_dirs([], 2, root) == runs[1:]
    assert resolve_run_dirs([], 10, root) == runs
    # the same folder named twice, once through the sweep: kept once, in first-seen order
    assert resolve_run_dirs([str(runs[1]), str(sweep_dir)], 1, root) == [runs[1], runs[2], runs[0].resolve()]


@pytest.mark.parametrize("targets, last, message", [
    ([], None, "nothing to compare"),
    (["missing-folder"], None, "missing-folder: not found; expected a run folder"),
    (["artifacts"], None, "neither a run folder"),
    (["artifacts/nothing*"], None, "matches no run folder"),
    ([], 0, "1 or more"),
    ([], 3, "no run folder"),
])
def test_resolve_explains_what_it_expected(tmp_path, monkeypatch, targets, last, message):
    monkeypatch.chdir(tmp_path)
    Path("artifacts").mkdir()
    with pytest.raises(UserInputError, match=message):
        resolve_run_dirs(targets, last, Path("artifacts"))


def test_a_sweep_whose_run_folder_is_gone_is_an_error(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"members": [{"name": "a", "run_dir": str(tmp_path / "gone")}]}))
    with pytest.raises(UserInputError, match="member 'a' has no run folder"):
        resolve_run_dirs([str(tmp_path)], None, tmp_path)


def test_a_config_run_with_several_seeds_gets_one_factor_warning_not_one_per_seed(tmp_path):
    reference = seed_group_runs(tmp_path, "ref", 16, [0.80, 0.81, 0.79])
    both = [write_run(tmp_path / f"both-{seed}", seed=seed, config={"model": {"hidden_dim": 32, "dropout": 0.2}})
            for seed in (42, 43, 44)]
    [warning] = compare(tmp_path, *reference, *both).warnings
    assert warning.startswith("runs both-42, both-43, both-44 differ from the reference ref-42 in 2 factors")


# ---- repeats, the seed-noise rule, the resolution, --ref -----------------------------------------------------


def test_repeats_of_one_run_count_once_in_their_seed_group(tmp_path):
    """The guide's trap: A trained three times with seed 42, then a sweep with 42, 43, 44. The three
    repeats of (A, seed 42) are one sample: mean and std are over the 3 distinct seeds, not 5 runs."""
    repeats = [write_run(tmp_path / f"a-42-{index}", seed=42, best_val=0.80) for index in range(3)]
    others = [write_run(tmp_path / f"a-{seed}", seed=seed, best_val=value)
              for seed, value in ((43, 0.79), (44, 0.83))]
    comparison = compare(tmp_path, *repeats, *others)
    [group] = comparison.groups
    assert group.seeds == [42, 43, 44] and group.best_val.seeds == 3
    assert group.best_val.mean == pytest.approx((0.80 + 0.79 + 0.83) / 3)
    assert group.best_val.std == pytest.approx(statistics.stdev([0.80, 0.79, 0.83]))
    assert [sample.label for sample in comparison.samples] == ["a-42-0 ×3", "a-43", "a-44"]
    [note] = comparison.notes
    assert note.startswith("a-42-0 ×3: 3 runs with the same config, seed, data, backbone, code and device")
    assert "also a-42-1, a-42-2" in note and "identical" in note
    assert comparison.warnings == []
    rows = list(csv.DictReader(comparison.csv_path.open()))
    assert [row["repeat_of"] for row in rows] == ["", "a-42-0", "a-42-0", "", ""]  # every run stays in the CSV
    assert "| a-42-0 ×3 | completed |" in comparison.markdown_path.read_text()


def test_repeats_stop_inflating_a_seed_group_and_flagging_noise_as_an_effect(tmp_path):
    # With the 3 repeats counted as seeds the reference looked tight (std 0.005 over 5 runs) and +0.009 looked
    # beyond it; over the 3 distinct seeds the noise is larger and the same difference is within it.
    reference = [*(write_run(tmp_path / f"ref-42-{index}", seed=42, best_val=0.80) for index in range(3)),
                 write_run(tmp_path / "ref-43", seed=43, best_val=0.79),
                 write_run(tmp_path / "ref-44", seed=44, best_val=0.81)]
    dropout = [write_run(tmp_path / f"dropout-{seed}", seed=seed, best_val=value, config={"model": {"dropout": 0.3}})
               for seed, value in ((42, 0.80), (43, 0.81), (44, 0.816))]
    comparison = compare(tmp_path, *reference, *dropout)
    reference_group, dropout_group = comparison.groups
    assert reference_group.best_val.std == pytest.approx(0.01)  # 0.80, 0.79, 0.81
    assert dropout_group.vs_reference == WITHIN_NOISE
    assert dropout_group.difference == pytest.approx((0.80 + 0.81 + 0.816) / 3 - 0.80)


def test_repeats_that_differ_are_said_to_differ_and_averaged(tmp_path):
    first = write_run(tmp_path / "gpu-1", best_val=0.80)
    second = write_run(tmp_path / "gpu-2", best_val=0.82)
    comparison = compare(tmp_path, first, second)
    [sample] = comparison.samples
    assert sample.score("best_val_score") == pytest.approx(0.81)
    assert "their scores differ (best val 0.8000 to 0.8200)" in comparison.notes[0]


def test_runs_with_another_code_or_status_are_not_repeats(tmp_path):
    base = write_run(tmp_path / "base")
    edited = write_run(tmp_path / "edited", code_version={**CODE_VERSION, "git_commit": "7654321"})
    failed = write_run(tmp_path / "failed", status="failed")
    assert [sample.label for sample in compare(tmp_path, base, edited, failed).samples] == ["base", "edited", "failed"]


@pytest.mark.parametrize("reference_values, other_values", [
    ([0.80, 0.82, 0.84], [0.81, 0.83, 0.85]),
    ([0.80, 0.82, 0.84], [0.86, 0.87, 0.88]),
    ([0.80, 0.81], [0.83, 0.84, 0.845, 0.85]),
    ([0.790, 0.791, 0.792], [0.797, 0.794, 0.799]),
])
def test_the_noise_verdict_is_welchs_t_test_at_five_percent(tmp_path, reference_values, other_values):
    from scipy import stats

    seeds = range(42, 42 + max(len(reference_values), len(other_values)))
    runs = [write_run(tmp_path / f"ref-{seed}", seed=seed, best_val=value)
            for seed, value in zip(seeds, reference_values)]
    runs += [write_run(tmp_path / f"wide-{seed}", seed=seed, best_val=value, config={"model": {"hidden_dim": 32}})
             for seed, value in zip(seeds, other_values)]
    _, group = compare(tmp_path, *runs).groups
    p_value = stats.ttest_ind(other_values, reference_values, equal_var=False).pvalue
    assert group.vs_reference == (BEYOND_NOISE if p_value < 0.05 else WITHIN_NOISE)
    standard_error = math.sqrt(statistics.variance(other_values) / len(other_values)
                               + statistics.variance(reference_values) / len(reference_values))
    assert group.threshold > 2 * standard_error  # a t quantile with few degrees of freedom is above 2


def test_fewer_than_two_distinct_seeds_on_a_side_leaves_the_noise_unknown(tmp_path):
    reference = seed_group_runs(tmp_path, "ref", 16, [0.80, 0.81, 0.79])
    one_seed = write_run(tmp_path / "wide-42", seed=42, best_val=0.90, config={"model": {"hidden_dim": 32}})
    comparison = compare(tmp_path, *reference, one_seed)
    assert comparison.groups[1].vs_reference == NOISE_UNKNOWN and comparison.groups[1].threshold is None
    [advice] = [note for note in comparison.notes if note.startswith("seed noise is unknown")]
    assert advice.startswith("seed noise is unknown for model.hidden_dim: 16 → 32:")
    assert f"finetune sweep --from-run {one_seed} --seeds 43,44`" in advice  # the seeds the reference has


def test_a_difference_of_fewer_than_three_val_examples_is_below_resolution(tmp_path):
    # 31 val texts: one example is 0.0323; +2 examples is below the resolution even though the seeds agree
    sizes = {"split_sizes": {"train": 250, "val": 31, "test": 31}}
    reference = [write_run(tmp_path / f"ref-{seed}", seed=seed, best_val=value, **sizes)
                 for seed, value in ((42, 20 / 31), (43, 20 / 31), (44, 21 / 31))]
    wider = [write_run(tmp_path / f"wide-{seed}", seed=seed, best_val=value, config={"model": {"hidden_dim": 32}},
                       **sizes) for seed, value in ((42, 22 / 31), (43, 22 / 31), (44, 23 / 31))]
    comparison = compare(tmp_path, *reference, *wider)
    assert comparison.groups[1].vs_reference == BELOW_RESOLUTION
    assert any(note.startswith("model.hidden_dim: 16 → 32 vs the reference: mean best val differs by +0.0645, "
                               "2.0 of 31 val examples: below resolution") for note in comparison.notes)
    assert comparison.resolution[0] == "val: 31 texts, one example = 0.0323 of accuracy (3.23 points)"
    markdown = comparison.markdown_path.read_text()
    assert "## Resolution" in markdown and "| +0.0645 (+2 ex) |" in markdown
    # three examples are enough to leave the verdict to the seeds
    assert compare(tmp_path, reference[0], write_run(tmp_path / "three", best_val=23 / 31, **sizes,
                                                     config={"model": {"hidden_dim": 64}})).groups[1].vs_reference \
        == NOISE_UNKNOWN


def test_ref_makes_any_run_the_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("artifacts")
    runs = [write_run(root / name) for name in ("20261124-100000", "20261124-110000", "20261124-120000")]
    assert resolve_run_dirs([], 2, root, reference=str(runs[0])) == [runs[0], *runs[1:]]
    assert resolve_run_dirs([str(runs[0]), str(runs[2])], None, root, reference=str(runs[2])) == [runs[2], runs[0]]
    with pytest.raises(UserInputError, match="--ref artifacts: not a run folder"):
        resolve_run_dirs([], 2, root, reference="artifacts")


def test_compare_ref_on_the_command_line(tmp_path, monkeypatch, capsys):
    from finetune_pipeline import cli

    monkeypatch.chdir(tmp_path)
    one_epoch = write_run(Path("artifacts/20261124-090000"), config={"training": {"epochs": 1}})
    baseline = write_run(Path("artifacts/20261124-100000"))
    dropout = write_run(Path("artifacts/20261124-110000"), config={"model": {"dropout": 0.3}})
    assert cli.main(["compare", "--last", "2", "--artifacts-root", "artifacts"]) == 0
    assert "2 factors" not in capsys.readouterr().out  # the newest two: baseline vs dropout
    assert cli.main(["compare", "--last", "2", "--ref", str(one_epoch), "--artifacts-root", "artifacts"]) == 0
    printed = capsys.readouterr().out
    assert f"Reference: {one_epoch.name} ({one_epoch}), given with --ref" in printed
    assert "differs from the reference 20261124-090000 in 2 factors" in " ".join(printed.split())
    assert baseline.name in printed and dropout.name in printed


def test_seeds_among_the_references_seeds_are_no_warning_but_42_against_43_is(tmp_path):
    reference = seed_group_runs(tmp_path, "ref", 16, [0.80, 0.81, 0.79])
    subset = write_run(tmp_path / "wide-42", seed=42, config={"model": {"hidden_dim": 32}})
    assert not any(w.startswith("seeds differ") for w in compare(tmp_path, *reference, subset).warnings)
    other = write_run(tmp_path / "wide-45", seed=45, config={"model": {"hidden_dim": 32}})
    [warning] = [w for w in compare(tmp_path, *reference, other).warnings if w.startswith("seeds differ")]
    assert "wide-45 ran with seed 45" in warning
