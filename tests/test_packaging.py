"""The wheel ships everything a user needs (every config and preset), and an installed copy works from any
folder: `finetune sweep A` must not depend on a checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "finetune_pipeline"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    # A copy of the source: setuptools builds in the tree, and a build/ folder left from an earlier build would
    # hand the wheel files that the package data settings no longer name.
    source = folder / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "artifacts", "cache", "rotten_tomatoes"))
    # no build isolation: the build uses this environment's setuptools instead of fetching one
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(folder), str(source)], check=True, capture_output=True, cwd=folder)
    (built,) = folder.glob("finetune_pipeline-*.whl")
    return built


def test_the_wheel_holds_every_module_config_and_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {path.relative_to(REPO_ROOT).as_posix() for pattern in ("*.py", "configs/*.json", "configs/**/*.json",
                                                                      "scripts/*.py")
               for path in PACKAGE_DIR.glob(pattern)}
    assert {"finetune_pipeline/configs/experiments/A.json", "finetune_pipeline/configs/train_config.json"} <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert not [name for name in names if "/artifacts/" in name or "/data/rotten_tomatoes" in name or "/cache/" in name]


def test_an_installed_copy_runs_presets_and_a_dry_run_from_another_folder(wheel, make_config, tmp_path):
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config_path = elsewhere / "config.json"
    config_path.write_text(json.dumps(make_config().to_plain()))
    environment = {**os.environ, "PYTHONPATH": str(target)}  # before site-packages: the wheel, not the checkout

    def run(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=elsewhere,
                              env=environment)

    where = run("-c", "import finetune_pipeline, finetune_pipeline.experiments.sweep as s; print(finetune_pipeline.__file__); "
                      "print(s.resolve_sweep_file('A'))")
    assert where.returncode == 0, where.stderr
    package_file, preset = where.stdout.split()
    assert package_file.startswith(str(target)) and Path(preset).is_file() and preset.startswith(str(target))
    help_text = run("-m", "finetune_pipeline.cli", "sweep", "A", "--help")
    assert help_text.returncode == 0 and "--from-run" in help_text.stdout
    dry = run("-m", "finetune_pipeline.cli", "train", "--config", str(config_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "preflight" in dry.stdout and not (elsewhere / "finetune_pipeline").exists()
