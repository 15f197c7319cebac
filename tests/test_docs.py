"""The README's and the students' guide's commands are commands this code accepts: every `finetune ...` and
`scripts/train.py` line in their bash blocks parses, names existing presets and configs, and sets only keys
that the schema validates. (Running them all would take hours; what they print is pasted from real runs.)"""

import re
import shlex
from pathlib import Path

import pytest

from finetune_pipeline import cli
from finetune_pipeline.core.config import apply_overrides, config_from_dict, parse_overrides, read_config_file
from finetune_pipeline.experiments.sweep import resolve_sweep_file
from tests.conftest import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", REPO_ROOT / "docs" / "GUIDE.ru.md"]
SHELL_VARIABLE = re.compile(r'"?\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?"?')


def commands(document: Path) -> list[str]:
    """The finetune and train.py command lines of the document's bash blocks, continuations joined."""
    found, in_bash, pending = [], False, ""
    for line in document.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_bash = line.strip() in ("```bash", "```sh")
            continue
        if not in_bash:
            continue
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        for part in re.split(r"\s*(?:&&|;)\s*", line.split(" #")[0].strip()):
            if part.startswith(("finetune ", "python finetune_pipeline/scripts/train.py")):
                found.append(part)
    return found


ALL_COMMANDS = [(document.name, command) for document in DOCUMENTS for command in commands(document)]
# configs that the documents' own `finetune new-experiment NAME` commands write before using them
WRITTEN_BY_THE_DOCUMENTS = {command.split()[2] for _, command in ALL_COMMANDS
                            if command.startswith("finetune new-experiment ")}


def test_the_documents_have_commands_to_check():
    assert len([c for name, c in ALL_COMMANDS if name == "GUIDE.ru.md"]) > 30
    assert len([c for name, c in ALL_COMMANDS if name == "README.md"]) > 10


@pytest.mark.parametrize("document, command", ALL_COMMANDS, ids=[f"{d}: {c}" for d, c in ALL_COMMANDS])
def test_a_documented_command_is_accepted(document, command, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    words = shlex.split(SHELL_VARIABLE.sub("finetune_pipeline/artifacts/20261201-101500", command))
    if any(word.startswith("<") for word in words):
        pytest.skip("a placeholder the reader fills in")
    arguments = words[1:] if words[0] == "finetune" else ["train", *words[2:]]
    try:
        parsed = cli.build_parser().parse_args(arguments)
    except SystemExit as exit_:
        pytest.fail(f"{command!r} does not parse (exit {exit_.code})")
    overrides = parse_overrides(getattr(parsed, "overrides", []))
    config_path = getattr(parsed, "config", None) or getattr(parsed, "source", None)
    if parsed.command == "sweep" and parsed.sweep:
        resolve_sweep_file(parsed.sweep)  # a preset or a file that exists
        return
    if config_path and Path(config_path).stem not in WRITTEN_BY_THE_DOCUMENTS:
        raw = read_config_file(config_path)
    else:
        raw = {}
    config_from_dict(apply_overrides(raw, overrides), source=command)  # every --set key and value validates
