"""The package's layout shows its architecture: subpackages one level deep whose imports point one way only
(runtime <- core <- runs <- experiments, serving <- the entry points), so a reader can start at the bottom."""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "finetune_pipeline"
LAYERS = {"errors": 0, "runtime": 0, "core": 1, "runs": 2, "experiments": 3, "serving": 3,
          "cli": 4, "api": 4, "in_memory": 4, "__init__": 4, "scripts": 4}
MODULES = sorted(path for path in PACKAGE.rglob("*.py")
                 if not {"artifacts", "cache", "data"} & set(path.relative_to(PACKAGE).parts[:-1]))


def layer_of(dotted: str) -> str:
    """'finetune_pipeline.core.training' -> 'core'; 'finetune_pipeline.cli' -> 'cli'."""
    return dotted.split(".")[1] if dotted.count(".") else "__init__"


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("finetune_pipeline"):
            if node.module == "finetune_pipeline":
                names |= {f"finetune_pipeline.{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("finetune_pipeline.")}
    return names


def test_subpackages_are_one_level_deep():
    assert len(MODULES) > 40
    for path in MODULES:
        parts = path.relative_to(PACKAGE).parts
        assert len(parts) <= 2, path
        assert parts[0] in LAYERS or parts[0].removesuffix(".py") in LAYERS, f"{path}: not in the layout"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for name in imported(path):
        other = layer_of(name)
        # within one subpackage, among the entry points, and between runtime and errors (the bottom) is fine
        level = LAYERS[own] == LAYERS[other] and (other == own or LAYERS[own] in (0, 4))
        assert LAYERS[other] < LAYERS[own] or level, f"{own} imports {name} ({other}), which is not below it"
