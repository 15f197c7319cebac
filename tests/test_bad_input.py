"""Bad input, swept: each malformed config or dataset exits 2 with a message that names the problem and the fix,
prints no traceback, and leaves no artifact (every check runs before the run folder exists)."""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from finetune_pipeline import cli
from finetune_pipeline.errors import EXIT_BAD_INPUT
from tests.conftest import deep_merge, toy_rows

# (case, change to the working config, what the message must contain)
BAD_CONFIGS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("seed of the wrong type", {"seed": "abc"}, ["seed"]),
    ("negative seed", {"seed": -1}, ["seed"]),
    ("zero epochs", {"training": {"epochs": 0}}, ["training.epochs"]),
    ("negative epochs", {"training": {"epochs": -3}}, ["training.epochs"]),
    ("fractional epochs", {"training": {"epochs": 2.5}}, ["training.epochs"]),
    ("zero batch size", {"training": {"batch_size": 0}}, ["training.batch_size"]),
    ("batch size as a word", {"training": {"batch_size": "eight"}}, ["training.batch_size"]),
    ("zero accumulation", {"training": {"gradient_accumulation_steps": 0}}, ["training.gradient_accumulation_steps"]),
    ("negative eval batch", {"training": {"eval_batch_size": -1}}, ["training.eval_batch_size"]),
    ("zero learning rate", {"training": {"learning_rate": 0}}, ["training.learning_rate"]),
    ("negative learning rate", {"training": {"learning_rate": -0.001}}, ["training.learning_rate"]),
    ("learning rate above 1", {"training": {"learning_rate": 5}}, ["training.learning_rate"]),
    ("zero encoder learning rate", {"training": {"encoder_learning_rate": 0}}, ["training.encoder_learning_rate"]),
    ("negative weight decay", {"training": {"weight_decay": -0.1}}, ["training.weight_decay"]),
    ("class weight of zero", {"training": {"class_weights": {"pos": 0}}}, ["training.class_weights", "above 0"]),
    ("class weights as a misspelt word", {"training": {"class_weights": "balance"}},
     ["training.class_weights", '"balanced"']),
    ("class weight for a label the data lacks", {"training": {"class_weights": {"positive": 2}}},
     ["training.class_weights", "['positive'] is not a label", "'neg', 'pos'"]),
    ("warmup ratio of 1", {"training": {"warmup_ratio": 1.0}}, ["training.warmup_ratio"]),
    ("unknown scheduler", {"training": {"scheduler": "exponential"}}, ["training.scheduler", "linear"]),
    ("zero gradient clipping", {"training": {"max_grad_norm": 0}}, ["training.max_grad_norm"]),
    ("infinite gradient clipping", {"training": {"max_grad_norm": float("inf")}},
     ["training.max_grad_norm", "finite number", "Infinity"]),
    ("val and test carving the whole train file", {"data": {"val_file": None, "test_file": None, "val_fraction": 0.5,
                                                            "test_fraction": 0.5}},
     ["data.val_fraction 0.5 + data.test_fraction 0.5", "nothing to train on"]),
    ("unknown precision", {"training": {"mixed_precision": "fp8"}}, ["training.mixed_precision", "bf16"]),
    ("zero log interval", {"training": {"log_every_steps": 0}}, ["training.log_every_steps"]),
    ("unknown metric", {"training": {"metric": "f1"}}, ["training.metric", "macro_f1"]),
    ("zero patience", {"training": {"early_stopping_patience": 0}}, ["training.early_stopping_patience"]),
    ("unknown device", {"training": {"device": "tpu"}}, ["training.device", "cuda"]),
    ("freeze flag as a word", {"training": {"freeze_backbone": "maybe"}}, ["training.freeze_backbone"]),
    ("dropout of 1", {"model": {"dropout": 1.0}}, ["model.dropout"]),
    ("negative dropout", {"model": {"dropout": -0.1}}, ["model.dropout"]),
    ("zero hidden size", {"model": {"hidden_dim": 0}}, ["model.hidden_dim"]),
    ("unknown pooling", {"model": {"pooling": "max"}}, ["model.pooling", "mean"]),
    ("zero max length", {"data": {"max_length": 0}}, ["data.max_length"]),
    ("max length beyond the backbone", {"data": {"max_length": 512}}, ["data.max_length", "64 tokens"]),
    ("max length beyond any model", {"data": {"max_length": 100_000}}, ["data.max_length", "8192"]),
    ("zero checkpoint interval", {"output": {"checkpoint_every_steps": 0}}, ["output.checkpoint_every_steps"]),
    ("misspelt section", {"trainig": {"epochs": 1}}, ["trainig", "training"]),
    ("misspelt key", {"training": {"learnig_rate": 0.1}}, ["learnig_rate", "learning_rate"]),
    ("key in the wrong section", {"model": {"learning_rate": 0.1}}, ["training.learning_rate"]),
    ("backbone that does not exist", {"model": {"backbone": "/no/such/backbone"}}, ["model.backbone", "/no/such"]),
    ("train file that does not exist", {"data": {"train_file": "/no/such/train.csv"}},
     ["/no/such/train.csv", "data.train_file"]),
]


def bad_dataset(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def csv_bytes(rows: list[tuple[str, str]], header: str = "text,label") -> bytes:
    return (header + "\n" + "".join(f"{text},{label}\n" for text, label in rows)).encode()


GOOD_ROWS = toy_rows(48, seed=1)
# (case, file name, content of the train file, what the message must contain)
BAD_DATASETS: list[tuple[str, str, bytes, list[str]]] = [
    ("empty file", "train.csv", b"", ["file is empty", "data.train_file"]),
    ("header only", "train.csv", b"text,label\n", ["header but no rows"]),
    ("only a byte order mark", "train.csv", b"\xef\xbb\xbf", ["empty"]),
    ("wrong column names", "train.csv", csv_bytes(GOOD_ROWS, "sentence,label"), ["no text column 'text'", "sentence"]),
    ("duplicate columns", "train.csv", csv_bytes([(f"{t},x", lab) for t, lab in GOOD_ROWS], "text,text,label"),
     ["duplicate column"]),
    ("a row with too many fields", "train.csv", csv_bytes(GOOD_ROWS) + b"a,b,c\n", ["fields but the header has 2"]),
    ("one class", "train.csv", csv_bytes([(text, "pos") for text, _ in GOOD_ROWS]), ["at least two classes"]),
    ("labels differing by case", "train.csv", csv_bytes(GOOD_ROWS + [("the good plot", "POS")]),
     ["differ only by upper/lower case"]),
    ("NaN label", "train.csv", csv_bytes(GOOD_ROWS + [("the good plot", "NaN")]), ["missing label", "line 50"]),
    ("empty text", "train.csv", csv_bytes(GOOD_ROWS) + b'"",pos\n', ["empty text", "line 50"]),
    ("bytes that are not UTF-8", "train.csv", csv_bytes(GOOD_ROWS) + b"caf\xe9 movie,pos\n", ["not UTF-8", "line 50"]),
    ("invalid JSON line", "train.jsonl", b'{"text": "good", "label": "pos"}\n{"text": "bad",\n', ["line 2", "invalid JSON"]),
    ("JSON line without a label", "train.jsonl", b'{"text": "good"}\n', ["no key 'label'"]),
    ("unsupported file type", "train.docx", b"not a table", ["unsupported file type"]),
    ("a broken spreadsheet", "train.xlsx", b"not a table", ["not a readable .xlsx workbook"]),
    ("a broken Parquet file", "train.parquet", b"not a table", ["not a readable Parquet file"]),
    ("a Windows-1251 export", "train.csv", csv_bytes(GOOD_ROWS) + "Отличный фильм,pos\n".encode("cp1251"),
     ["line 50", "not UTF-8", "Windows-1251 Cyrillic: «Отличный фильм,pos»", '"cp1251"', "data.encoding"]),
    ("a directory instead of a file", "folder.csv", b"", ["is a directory"]),
]


@pytest.fixture
def write_config(make_config, tmp_path):
    def write(change: dict[str, Any]) -> tuple[Path, Path]:
        plain = deep_merge(make_config().to_plain(), change)
        path = tmp_path / "config.json"
        path.write_text(json.dumps(plain))
        return path, Path(plain["output"]["artifacts_root"])

    return write


def expect_bad_input(arguments: list[str], artifacts_root: Path, expected: list[str], capsys) -> None:
    assert cli.main(arguments) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "Traceback" not in error
    messages = [line for line in error.splitlines() if line.startswith("error: ")]
    assert len(messages) == 1, error  # one message, not a dump (progress bars may share stderr)
    message = error[error.index("error: "):]
    for fragment in expected:
        assert fragment in message, (fragment, error)
    assert not artifacts_root.exists() or not any(artifacts_root.iterdir())


@pytest.mark.parametrize(("case", "change", "expected"), BAD_CONFIGS, ids=[case for case, _, _ in BAD_CONFIGS])
def test_a_bad_config_exits_2_naming_the_key(write_config, capsys, case, change, expected):
    config_path, artifacts_root = write_config(change)
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root, expected, capsys)


@pytest.mark.parametrize(("case", "file_name", "content", "expected"), BAD_DATASETS,
                         ids=[case for case, _, _, _ in BAD_DATASETS])
def test_a_bad_dataset_exits_2_naming_the_file_and_line(write_config, tmp_path, capsys, case, file_name, content,
                                                         expected):
    train_file = tmp_path / file_name
    if case == "a directory instead of a file":
        train_file.mkdir()
    else:
        train_file.write_bytes(content)
    config_path, artifacts_root = write_config({"data": {"train_file": str(train_file)}})
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root, expected + [file_name], capsys)


def test_a_val_label_never_seen_in_train_exits_2_with_a_suggestion(write_config, tmp_path, capsys):
    val_file = tmp_path / "val.csv"
    val_file.write_bytes(csv_bytes(toy_rows(16, seed=2) + [("the plot", "Neg ")]))
    config_path, artifacts_root = write_config({"data": {"val_file": str(val_file)}})
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root,
                     ["val.csv", "line 18", "never occurs in the train split"], capsys)


def test_a_config_file_that_is_not_json_or_not_an_object(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"training": {"epochs": 2,}}')
    expect_bad_input(["train", "--config", str(broken)], tmp_path / "artifacts", ["broken.json", "line 1"], capsys)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    expect_bad_input(["train", "--config", str(listed)], tmp_path / "artifacts", ["list.json"], capsys)


@pytest.mark.parametrize(("case", "text", "expected"), [
    ("an empty file", "", ["empty.json", "the file is empty", "train_config.json"]),
    ("a // comment", '{\n  // fewer epochs\n  "seed": 1\n}', ["line 2", "JSON has no comments"]),
    ("a comma after the last item", '{"seed": 1,}', ["line 1", "no comma after the last item"]),
    ("single quotes", "{'seed': 1}", ["double quotes"]),
    ("a key given twice", '{"training": {\n  "epochs": 2,\n  "epochs": 3}}',
     ["key 'epochs' appears more than once", "lines 2, 3", "delete the others"]),
], ids=["empty", "comment", "trailing comma", "single quotes", "repeated key"])
def test_a_hand_edited_config_gets_the_cause_and_the_fix(tmp_path, capsys, case, text, expected):
    path = tmp_path / ("empty.json" if case == "an empty file" else "config.json")
    path.write_text(text, encoding="utf-8")
    expect_bad_input(["train", "--config", str(path), "--dry-run"], tmp_path / "artifacts", expected, capsys)


def test_a_config_saved_with_a_byte_order_mark_is_read(write_config):
    from finetune_pipeline.core.config import load_config

    config_path, _ = write_config({"training": {"epochs": 3}})
    config_path.write_bytes(b"\xef\xbb\xbf" + config_path.read_bytes())  # as Windows Notepad saves UTF-8
    assert load_config(config_path).training.epochs == 3


@pytest.mark.parametrize(("case", "content"), [
    ("byte order mark and Windows line endings", b"\xef\xbb\xbf" + csv_bytes(GOOD_ROWS).replace(b"\n", b"\r\n")),
    ("quoted multi-line field", csv_bytes(GOOD_ROWS) + b'"the good\nplot",pos\n'),
    ("very long texts", csv_bytes(GOOD_ROWS) + b'"' + b"good movie " * 5000 + b'",pos\n'),
])
def test_awkward_but_valid_files_train(write_config, tmp_path, capsys, case, content):
    train_file = tmp_path / "awkward.csv"
    train_file.write_bytes(content)
    config_path, artifacts_root = write_config({"data": {"train_file": str(train_file)}, "training": {"epochs": 1}})
    assert cli.main(["train", "--config", str(config_path)]) == 0, capsys.readouterr().err
    (run_dir,) = artifacts_root.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    if case == "very long texts":
        assert metrics["token_lengths"]["train"]["truncated"] == 1


def test_encoder_learning_rate_with_a_frozen_backbone_is_a_warning_not_an_error(write_config, capsys):
    config_path, artifacts_root = write_config({"training": {"freeze_backbone": True, "encoder_learning_rate": 0.5,
                                                             "epochs": 1}})
    assert cli.main(["train", "--config", str(config_path)]) == 0
    assert "training.encoder_learning_rate is ignored" in capsys.readouterr().err


def test_an_unwritable_artifacts_root_fails_before_training(write_config, tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    config_path, _ = write_config({"output": {"artifacts_root": str(blocked / "artifacts")}})
    assert cli.main(["train", "--config", str(config_path)]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert "output.artifacts_root" in error and "Traceback" not in error


def test_a_full_disk_fails_before_training_and_says_how_much_is_needed(write_config, monkeypatch, capsys):
    config_path, artifacts_root = write_config({"training": {"freeze_backbone": False}})
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30, 2**20))
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root,
                     ["output.artifacts_root", "1 MiB free", "MiB of checkpoints"], capsys)


# ---- Safe loading ----

def test_every_torch_load_in_the_package_passes_weights_only_true():
    import ast

    package = Path(__file__).resolve().parents[1] / "finetune_pipeline"
    calls = []
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                calls.append((source.name, node.lineno, [ast.unparse(value) for value in weights_only]))
    assert calls, "no torch.load found: the scan is looking in the wrong place"
    assert all(flags == ["True"] for _, _, flags in calls), calls


def test_artifacts_record_paths_as_given_not_the_expanded_home(make_config, tiny_backbone_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(tiny_backbone_dir, home / "models" / "tiny")
    monkeypatch.setenv("HOME", str(home))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(deep_merge(make_config().to_plain(), {"model": {"backbone": "~/models/tiny"}})))
    assert cli.main(["train", "--config", str(config_path)]) == 0
    (run_dir,) = (tmp_path / "artifacts").iterdir()
    for path in run_dir.iterdir():
        if path.suffix in (".json", ".log", ".html", ".md"):
            text = path.read_text(encoding="utf-8")
            assert str(home) not in text, path.name
    assert json.loads((run_dir / "config.json").read_text())["model"]["backbone"] == "~/models/tiny"


# ---- whatever escapes a command: one message and a documented exit code (issue 25) ----


def test_a_config_key_given_as_an_option_points_at_set(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", "3", "--batch-size=4"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert ("config values are set with --set KEY=VALUE: --set training.epochs=3 --set training.batch_size=4"
            in capsys.readouterr().err)


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "FINETUNE_DEBUG=1"])
def test_a_bug_is_one_line_with_how_to_see_the_traceback(write_config, monkeypatch, capsys, debug):
    from finetune_pipeline.errors import EXIT_INTERNAL_ERROR

    def broken(*arguments, **keywords):
        raise ZeroDivisionError("a slip in the package")

    monkeypatch.setattr("finetune_pipeline.runs.run.prepare_run", broken)
    if debug:
        monkeypatch.setenv(cli.DEBUG_VARIABLE, "1")
    config_path, _ = write_config({})
    assert cli.main(["train", "--config", str(config_path)]) == EXIT_INTERNAL_ERROR
    error = capsys.readouterr().err
    assert "error: a bug in finetune_pipeline stopped the command: ZeroDivisionError: a slip in the package" in error
    assert "FINETUNE_DEBUG=1" in error
    assert ("Traceback" in error) == debug


def test_a_disk_that_fills_during_a_run_ends_as_a_failed_run_that_resume_continues(write_config, monkeypatch,
                                                                                   capsys):
    import errno

    from finetune_pipeline.errors import EXIT_SYSTEM_FAULT
    from finetune_pipeline.runs.run_folder import RESERVED_SPACE_FILE
    from finetune_pipeline.runtime import files

    real_write = files.write_atomically
    disk = {"full": False}

    def write_on_a_filling_disk(path: Path, write) -> None:
        """The disk fills at the first best checkpoint; from then on nothing fits but what the run's reserved
        space makes room for once it is released."""
        disk["full"] = disk["full"] or path.name == "best_model.pt"
        if disk["full"] and (path.parent / RESERVED_SPACE_FILE).exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, write)

    monkeypatch.setattr(files, "write_atomically", write_on_a_filling_disk)
    config_path, artifacts_root = write_config({"training": {"freeze_backbone": False}})
    assert cli.main(["train", "--config", str(config_path)]) == EXIT_SYSTEM_FAULT
    error = capsys.readouterr().err
    (run_dir,) = artifacts_root.iterdir()
    assert "Traceback" not in error
    assert f"error: {run_dir / 'best_model.pt'}: No space left on device; free space on that disk" in error
    assert f"then continue it with `finetune train --resume {run_dir}`" in error
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "No space left on device" in metrics["error"]
    assert not list(run_dir.glob(".*.tmp"))  # the reserved space went first, the failed write's temporary too

    monkeypatch.setattr(files, "write_atomically", real_write)  # space freed: the run continues
    assert cli.main(["train", "--resume", str(run_dir)]) == 0, capsys.readouterr().err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_cache_folder_that_cannot_be_written_fails_before_the_run_folder(write_config, tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    config_path, artifacts_root = write_config({"output": {"cache_dir": str(blocked / "cache")}})
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root,
                     ["output.cache_dir", "cannot write there", "point output.cache_dir at a folder"], capsys)


def test_a_head_too_large_to_allocate_is_out_of_memory_before_the_run_folder(write_config, capsys):
    from finetune_pipeline.errors import EXIT_OUT_OF_MEMORY

    config_path, artifacts_root = write_config({"model": {"hidden_dim": 10**10}})
    assert cli.main(["train", "--config", str(config_path)]) == EXIT_OUT_OF_MEMORY
    error = capsys.readouterr().err
    assert "out of memory building the model" in error and "Traceback" not in error
    assert not artifacts_root.exists() or not any(artifacts_root.iterdir())


# ---- backbones: folders that are not models, damaged files, models that are not encoders (issue 25) ----


@pytest.fixture
def odd_backbone(tiny_backbone_dir, tmp_path):
    """A model folder beside the tiny BERT: its tokenizer files (pad_token and eos_token as given), a model's
    weights or only a config."""
    from transformers import BertTokenizer

    def build(model: Any = None, config: Any = None, pad_token: str | None = "[PAD]",
              eos_token: str | None = None) -> Path:
        folder = tmp_path / "odd-backbone"
        BertTokenizer(vocab=tiny_vocabulary(tiny_backbone_dir), pad_token=pad_token,
                      eos_token=eos_token).save_pretrained(folder)
        if model is not None:
            model.save_pretrained(folder)
        else:
            config.save_pretrained(folder)
        return folder

    return build


def tiny_vocabulary(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def tiny_gpt2(vocabulary_size: int) -> Any:
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=vocabulary_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                bos_token_id=3, eos_token_id=3))


def test_a_decoder_only_backbone_without_a_padding_token_trains_padding_with_its_end_token(
        write_config, odd_backbone, tiny_backbone_dir, capsys):
    folder = odd_backbone(model=tiny_gpt2(len(tiny_vocabulary(tiny_backbone_dir))), pad_token=None, eos_token="[SEP]")
    config_path, artifacts_root = write_config({"model": {"backbone": str(folder)},
                                                "training": {"freeze_backbone": False, "epochs": 1}})
    assert cli.main(["train", "--config", str(config_path)]) == 0, capsys.readouterr().err
    (run_dir,) = artifacts_root.iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    capsys.readouterr()
    assert cli.main(["predict", str(run_dir), "--text", "a good movie", "--text", "bad"]) == 0
    assert [line.split("\t")[-1] for line in capsys.readouterr().out.splitlines()] == ["a good movie", "bad"]

    config_path, artifacts_root = write_config({"model": {"backbone": str(folder), "pooling": "cls"}})
    shutil.rmtree(artifacts_root)
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root,
                     ["model.pooling 'cls'", "GPT2 is a decoder-only model", 'use model.pooling "mean"'], capsys)


@pytest.mark.parametrize("case", ["encoder-decoder", "no padding or end token", "missing folder", "empty folder",
                                  "weights cut short"])
def test_a_backbone_that_cannot_serve_is_refused_before_the_run_folder(write_config, odd_backbone,
                                                                      tiny_backbone_dir, tmp_path, capsys, case):
    from transformers import T5Config

    if case == "encoder-decoder":
        folder = odd_backbone(config=T5Config(vocab_size=64, d_model=32, num_layers=1, num_heads=2, d_ff=64))
        expected = ["T5 is an encoder-decoder model", "Choose an encoder", "bert-base-uncased"]
    elif case == "no padding or end token":
        folder = odd_backbone(model=tiny_gpt2(64), pad_token=None)
        expected = ["neither a padding token nor an end-of-text token", "pad_token"]
    elif case == "missing folder":
        folder = tmp_path / "models" / "no-such-model"
        expected = ["no such folder", "config.json", "sentence-transformers/all-MiniLM-L6-v2"]
    elif case == "empty folder":
        folder = tmp_path / "empty-model"
        folder.mkdir()
        expected = ["has no config.json", "holds: nothing"]
    else:
        folder = tmp_path / "cut-short"
        shutil.copytree(tiny_backbone_dir, folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
        expected = ["could not load its weights", "download it again"]
    config_path, artifacts_root = write_config({"model": {"backbone": str(folder)},
                                                "training": {"freeze_backbone": False}})
    expect_bad_input(["train", "--config", str(config_path)], artifacts_root, ["model.backbone", *expected], capsys)


# ---- a damaged run folder: every command that reads one words it as compare does (issue 25) ----


@pytest.mark.parametrize("damaged", ["metrics.json", "config.json"])
def test_a_damaged_run_file_is_named_by_predict_evaluate_export_resume_and_load_run(make_config, toy_data, damaged,
                                                                                  capsys):
    import finetune_pipeline as ft
    from finetune_pipeline.errors import UserInputError
    from finetune_pipeline.runs.run import run_training

    run_dir = run_training(make_config(training={"epochs": 1}))
    (run_dir / damaged).write_text('{"status": "compl')  # cut short, as by a copy that stopped
    expected = [str(run_dir), f"{damaged} cannot be read", "restore it from a copy"]
    for arguments in (["predict", str(run_dir), "--text", "good"],
                      ["evaluate", str(run_dir), "--data", toy_data["test_file"]],
                      ["export", str(run_dir)], ["train", "--resume", str(run_dir)]):
        expect_bad_input(arguments, run_dir.parent / "none", expected, capsys)
    with pytest.raises(UserInputError, match=f"{damaged} cannot be read"):
        ft.load_run(run_dir)
    assert not (run_dir / "export").exists()


def test_a_checkpoint_cut_short_or_carrying_code_is_refused_in_the_users_words(tmp_path):
    import torch

    from finetune_pipeline.errors import UserInputError
    from finetune_pipeline.runtime.files import load_checkpoint

    whole = tmp_path / "best_model.pt"
    torch.save({"weights": torch.zeros(4096)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"where": Path("/tmp")}, foreign)  # a pickled object: unpickling it could run code
    with pytest.raises(UserInputError, match="not a readable checkpoint .*cut short.*best_model.pt or final_model.pt"):
        load_checkpoint(cut)
    with pytest.raises(UserInputError) as refused:
        load_checkpoint(foreign)
    assert "objects other than tensors and plain types (pathlib.PosixPath)" in str(refused.value)
    assert "weights_only=False" not in str(refused.value)  # torch's own advice is exactly what must not be done


def test_new_experiment_writes_and_prints_non_ascii_text_as_text(tmp_path, monkeypatch, capsys):
    (tmp_path / "finetune_pipeline" / "configs").mkdir(parents=True)
    source = tmp_path / "base.json"
    source.write_text("{}", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new-experiment", "russian", "--from", str(source), "--set", "data.text_column=отзыв"]) == 0
    printed = capsys.readouterr().out
    assert 'data.text_column: "text" -> "отзыв"' in printed and "\\u" not in printed
    written = (tmp_path / "finetune_pipeline" / "configs" / "russian.json").read_text(encoding="utf-8")
    assert '"text_column": "отзыв"' in written
