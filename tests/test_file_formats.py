"""The data files people really have: delimiters and encodings of spreadsheet exports, Parquet, Excel and
datasets folders, each read into the same examples as a plain UTF-8 CSV."""

import builtins
import codecs
import json

import pytest

from finetune_pipeline.core.config import config_from_dict
from finetune_pipeline.core.data import load_splits, read_labelled_file, split_settings
from finetune_pipeline.core.readers import source_sha256
from finetune_pipeline.errors import UserInputError

ROWS = [("Отличный фильм, всем советую", "хорошо"), ("Скучно; ушёл с середины", "плохо"),
        ("Неплохо", "хорошо"), ("Ужасно", "плохо")]


def delimited(rows: list[tuple[str, str]], delimiter: str, header: str = "text{d}label") -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header.format(d=delimiter).split(delimiter))
    writer.writerows(rows)
    return buffer.getvalue()


def read(path, split: str = "train", delimiter: str | None = None, encoding: str = "utf-8", text: str = "text"):
    examples = read_labelled_file(path, text, "label", split_settings(split), delimiter, encoding)
    return [(example.text, example.label) for example in examples]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_is_detected_from_the_header(tmp_path, delimiter):
    path = tmp_path / "export.csv"
    path.write_text(delimited(ROWS, delimiter), encoding="utf-8")
    assert read(path) == ROWS


def test_a_tsv_file_is_tab_separated_whatever_data_delimiter_says(tmp_path):
    path = tmp_path / "val.tsv"
    path.write_text(delimited(ROWS, "\t"), encoding="utf-8")
    assert read(path, "val", delimiter=";") == ROWS


def test_a_russian_locale_spreadsheet_export_reads_with_its_encoding(tmp_path):
    """';' between fields, Windows-1251 bytes, CRLF: what a spreadsheet in a Russian locale saves as CSV."""
    path = tmp_path / "export.csv"
    path.write_bytes(delimited(ROWS, ";").encode("cp1251"))
    with pytest.raises(UserInputError) as excinfo:
        read(path)
    message = str(excinfo.value)
    assert f"{path}, line 2: bytes that are not UTF-8" in message
    assert "they decode as Windows-1251 Cyrillic: «Отличный фильм, всем советую;хорошо»" in message
    assert 'set data.encoding (or data.formats.train.encoding for this file only) to "cp1251"' in message
    assert "re-save the file as UTF-8" in message
    assert read(path, encoding="cp1251") == ROWS


def test_western_legacy_bytes_are_described_as_windows_1252(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(delimited([("A café in Zürich", "good"), ("Très bien", "good")], ",").encode("cp1252"))
    with pytest.raises(UserInputError, match="decode as Windows-1252 Western European: «A café in Zürich,good»"):
        read(path)


def test_utf16_with_a_byte_order_mark_needs_no_setting(tmp_path):
    path = tmp_path / "unicode-text.tsv"
    path.write_bytes(codecs.BOM_UTF16_LE + delimited(ROWS, "\t").encode("utf-16-le"))
    assert read(path) == ROWS


def test_a_header_on_another_delimiter_says_how_it_splits(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text(delimited(ROWS, ";", header="review{d}sentiment"), encoding="utf-8")
    with pytest.raises(UserInputError) as excinfo:
        read(path)
    assert "no text column 'text'; columns found: review, sentiment (split on ';')" in str(excinfo.value)
    # the explicit delimiter wins over detection: on ',' this header is one column
    path.write_text("text;label,x\nsome;thing,1\n", encoding="utf-8")
    with pytest.raises(UserInputError) as excinfo:
        read(path, delimiter=",")
    message = str(excinfo.value)
    assert "columns found: text;label, x (split on ','; the header splits on ';' into 2 columns: text, label,x)" \
        in message and "or data.delimiter" in message


def test_per_file_formats_work_like_the_column_overrides(tmp_path):
    train = tmp_path / "train.csv"
    train.write_bytes(delimited(ROWS * 5, ";").encode("cp1251"))
    val = tmp_path / "val.csv"
    val.write_text(delimited(ROWS, ","), encoding="utf-8")
    config = config_from_dict({"data": {"train_file": str(train), "val_file": str(val), "test_file": str(val),
                                        "formats": {"train": {"encoding": "cp1251", "delimiter": ";"}}}})
    splits = load_splits(config.data, seed=0)
    assert splits.sizes() == {"train": 20, "val": 4, "test": 4}
    assert splits.label_names == ["плохо", "хорошо"]


def test_delimiter_and_encoding_settings_are_validated():
    data = config_from_dict({"data": {"delimiter": "tab", "encoding": "cp1251"}}).data
    assert (data.delimiter, data.encoding) == ("\t", "cp1251")
    with pytest.raises(UserInputError, match="data.delimiter: .*one character"):
        config_from_dict({"data": {"delimiter": ";;"}})
    with pytest.raises(UserInputError, match="data.formats.val.encoding: .*not an encoding"):
        config_from_dict({"data": {"formats": {"val": {"encoding": "windows-9999"}}}})


# ---- tables ----------------------------------------------------------------------------------------------------


def test_parquet(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    path = tmp_path / "train.parquet"
    parquet.write_table(pyarrow.table({"text": [text for text, _ in ROWS], "label": [label for _, label in ROWS],
                                       "extra": [1, 2, 3, 4]}), path)
    assert read(path) == ROWS
    with pytest.raises(UserInputError, match="no text column 'review'; columns found: text, label, extra"):
        read(path, text="review")


def test_excel_first_sheet_with_a_header_row(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["text", "label"])
    for text, label in ROWS:
        sheet.append([text, label])
    sheet.append([42, "хорошо"])  # a number typed into the text column is read as its text
    sheet.append([None, None])  # an empty row (row 7): skipped, and the rows after it keep their numbers
    workbook.create_sheet("notes").append(["ignored"])
    path = tmp_path / "train.xlsx"
    workbook.save(path)
    assert read(path) == [*ROWS, ("42", "хорошо")]
    sheet.append(["", "плохо"])
    workbook.save(path)
    with pytest.raises(UserInputError, match=f"{path}, line 8, column 'text': empty text"):
        read(path)  # rows are numbered as in the spreadsheet


def test_a_saved_datasets_folder_with_class_label_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["плохо", "хорошо"])})
    rows = {"text": [text for text, _ in ROWS], "label": [1, 0, 1, 0]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "single")
    assert read(tmp_path / "single") == ROWS  # ids become the label names
    whole = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                                  "validation": datasets.Dataset.from_dict({"text": ["Шедевр"], "label": [1]},
                                                                           features=features)})
    whole.save_to_disk(tmp_path / "dict")
    assert read(tmp_path / "dict") == ROWS  # train takes the split named train
    assert read(tmp_path / "dict", split="val") == [("Шедевр", "хорошо")]  # val takes validation
    assert read(f"{tmp_path / 'dict'}@validation") == [("Шедевр", "хорошо")]
    with pytest.raises(UserInputError, match="no split 'test'; splits found: train, validation"):
        read(f"{tmp_path / 'dict'}@test")
    folder_hash = source_sha256(str(tmp_path / "dict"), "train")
    assert folder_hash == source_sha256(str(tmp_path / "dict"), "train")
    (tmp_path / "dict" / "train" / "dataset_info.json").write_text(json.dumps({"description": "edited"}))
    assert source_sha256(str(tmp_path / "dict"), "train") != folder_hash


def test_a_datasets_folder_trains_end_to_end(make_config, tmp_path):
    datasets = pytest.importorskip("datasets")
    from finetune_pipeline.runs.run import run_training
    from tests.conftest import toy_rows

    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        rows = toy_rows(48 if split == "train" else 16, seed=seed)
        datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [label for _, label in rows]}) \
            .save_to_disk(tmp_path / "toy" / split)
    (tmp_path / "toy" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    folder = str(tmp_path / "toy")
    run_dir = run_training(make_config(data={"train_file": folder, "val_file": f"{folder}@validation",
                                             "test_file": f"{folder}@test"}))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["split_sizes"] == {"train": 48, "val": 16, "test": 16}
    assert len(metrics["data_files"]["val"]["sha256"]) == 64

    from finetune_pipeline.serving.inference import evaluate_file  # a folder evaluates too, hashed like a run's data

    scores, _ = evaluate_file(run_dir, f"{folder}@test", None, None, "folder")
    assert scores["examples"] == 16 and scores["data_sha256"] == metrics["data_files"]["test"]["sha256"]
    assert scores["data_rows_sha256"] == metrics["data_files"]["test"]["rows_sha256"]


@pytest.mark.parametrize("suffix, module", [(".parquet", "pyarrow.parquet"), (".xlsx", "openpyxl")])
def test_without_the_formats_extra_the_error_says_what_to_install(tmp_path, monkeypatch, suffix, module):
    real_import = builtins.__import__

    def no_such_module(name, *args, **kwargs):
        if name == module:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_such_module)
    path = tmp_path / f"train{suffix}"
    path.write_bytes(b"anything")
    with pytest.raises(UserInputError, match=r'pip install "finetune-pipeline\[formats\]"'):
        read(path)


def test_predict_reads_the_same_formats(make_config, tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    from finetune_pipeline.runs.run import run_training
    from finetune_pipeline.serving.inference import predict_file

    run_dir = run_training(make_config(training={"epochs": 1}))
    texts = ["good movie", "awful plot", "the film was fun"]
    parquet.write_table(pyarrow.table({"text": texts}), tmp_path / "new.parquet")
    assert predict_file(run_dir, tmp_path / "new.parquet", tmp_path / "out.jsonl").labelled == 3
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["text"] for row in written] == texts


# ---- the same problem read alike in every format (issue 25) ----


def excel_file(path, sheets: dict[str, list[list]]):
    openpyxl = pytest.importorskip("openpyxl")
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    workbook.save(path)
    return path


def test_two_columns_of_one_name_are_refused_in_every_format(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    from pyarrow import parquet

    rows = [["text", "label", "label"], *([text, label, "x"] for text, label in ROWS)]
    (tmp_path / "two.csv").write_text("\n".join(",".join(row) for row in rows), encoding="utf-8")
    excel_file(tmp_path / "two.xlsx", {"data": rows})
    columns = list(zip(*rows[1:], strict=True))
    parquet.write_table(pyarrow.table(list(columns), names=rows[0]), tmp_path / "two.parquet")
    for name in ("two.csv", "two.xlsx", "two.parquet"):
        with pytest.raises(UserInputError, match=r"line 1: duplicate column name\(s\) \['label'\]; rename"):
            read(tmp_path / name)


def test_integer_labels_written_as_1_0_are_the_class_1_in_a_csv_too(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("text,label\ngood,1\nbad,0.0\nfine,1.0\nawful,0\n", encoding="utf-8")
    assert read(path) == [("good", "1"), ("bad", "0"), ("fine", "1"), ("awful", "0")]
    (tmp_path / "numbers.jsonl").write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label
                                                    in (("good", 1), ("bad", 0.0), ("fine", 1.0), ("awful", 0))))
    assert read(tmp_path / "numbers.jsonl") == read(path)
    path.write_text("text,label\ngood,1.5\nbad,1.50\n", encoding="utf-8")
    assert read(path) == [("good", "1.5"), ("bad", "1.50")]  # only a whole number loses its zeros


def test_one_long_document_in_a_csv_cell_is_read(tmp_path):
    path = tmp_path / "long.csv"
    long_text = "a very long review, " * 20_000  # 400 KB in one field: over csv's default cap of 128 KiB
    path.write_text(f'text,label\n"{long_text}",pos\nshort,neg\n', encoding="utf-8")
    assert read(path) == [(long_text, "pos"), ("short", "neg")]


@pytest.mark.parametrize("where, sheets, expected", [
    ("under a title row", {"data": [["Reviews, 2026"], [], ["text", "label"], *map(list, ROWS)]},
     "are in row 3 of the first sheet \\('data'\\), but only the first sheet is read, with its header in row 1; delete "
     "the rows above the header"),
    ("on the second sheet", {"notes": [["read me"]], "data": [["text", "label"], *map(list, ROWS)]},
     "are in row 1 of sheet 'data' \\(sheet 2\\), but only the first sheet is read.*move that sheet first"),
])
def test_an_excel_header_elsewhere_is_pointed_at(tmp_path, where, sheets, expected):
    path = excel_file(tmp_path / "book.xlsx", sheets)
    with pytest.raises(UserInputError, match=expected):
        read(path)


def test_a_datasetdict_folder_as_train_file_brings_its_own_val_and_test(tmp_path):
    datasets = pytest.importorskip("datasets")
    from finetune_pipeline.core.config import DEFAULT_DATA_FILES

    rows = {"text": [text for text, _ in ROWS], "label": [label for _, label in ROWS]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "validation": datasets.Dataset.from_dict(rows),
                          "test": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "dict")
    # as copied from train_config.json: another train file, the default dataset's val and test files left in place
    config = config_from_dict({"data": {"train_file": str(tmp_path / "dict"), "val_file": DEFAULT_DATA_FILES["val"],
                                        "test_file": DEFAULT_DATA_FILES["test"]}})
    assert (config.data.val_file, config.data.test_file) == (f"{tmp_path / 'dict'}@validation",
                                                              f"{tmp_path / 'dict'}@test")
    assert config.data.file_origin("val") == "the validation split of data.train_file's DatasetDict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(tmp_path / "train-only")
    config = config_from_dict({"data": {"train_file": str(tmp_path / "train-only")}})
    assert config.data.val_file is None and config.data.test_file is None  # carved out of train, as before
