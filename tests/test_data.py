"""Tests for finetune_pipeline.core.data: reading files, labels and splitting (no tokenizer needed)."""

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from finetune_pipeline.core.config import ColumnNames, ColumnOverrides, DataConfig
from finetune_pipeline.core.data import Example, label_names_from, load_splits, read_labelled_file, split_settings
from finetune_pipeline.errors import UserInputError

ROWS = [
    ('"quoted" start, with a comma', "pos"),
    ("plain text", "neg"),
    ("it's fine; really", "pos"),
    ("ünïcödé text ✓", "neg"),
]


# --- helpers -----------------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[tuple], delimiter: str = ",") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    # GLUE-style TSV: no quoting at all
    lines = ["\t".join(header)] + ["\t".join(str(field) for field in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def read(path: Path, text_column: str = "text", label_column: str = "label", split: str = "train") -> list[Example]:
    return read_labelled_file(path, text_column=text_column, label_column=label_column,
                              settings=split_settings(split))


def read_error(path: Path, text_column: str = "text", label_column: str = "label", split: str = "train") -> str:
    with pytest.raises(UserInputError) as excinfo:
        read(path, text_column, label_column, split)
    return str(excinfo.value)


def balanced_rows(counts: dict[str, int]) -> list[tuple[str, str]]:
    rows = []
    for label, count in counts.items():
        rows.extend((f"{label} example number {i}", label) for i in range(count))
    # interleave deterministically so the file is not sorted by label
    return sorted(rows, key=lambda row: (int(row[0].rsplit(" ", 1)[1]), row[1]))


def train_only_config(path: Path, val_fraction: float = 0.1, test_fraction: float = 0.1) -> DataConfig:
    return DataConfig(
        train_file=str(path), val_file=None, test_file=None, val_fraction=val_fraction, test_fraction=test_fraction
    )


# --- formats -----------------------------------------------------------------------------------------


def test_csv_tsv_and_jsonl_parse_into_the_same_examples(tmp_path):
    from_csv = read(write_csv(tmp_path / "d.csv", ["text", "label"], ROWS))
    from_tsv = read(write_tsv(tmp_path / "d.tsv", ["text", "label"], ROWS))
    from_jsonl = read(write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": l} for t, l in ROWS]))
    expected = [Example(text=text, label=label, line=line) for line, (text, label) in enumerate(ROWS, start=2)]
    assert from_csv == expected
    assert from_tsv == expected
    # JSON Lines has no header: the first record is on line 1
    assert [(e.text, e.label) for e in from_jsonl] == [(e.text, e.label) for e in expected]
    assert [e.line for e in from_jsonl] == [1, 2, 3, 4]


def test_tsv_keeps_a_leading_double_quote_unchanged(tmp_path):
    path = tmp_path / "glue.tsv"
    path.write_text('sentence\tlabel\n"hide new secretions from the parental units \t0\nok " fine\t1\n', encoding="utf-8")
    examples = read(path, text_column="sentence")
    assert [e.text for e in examples] == ['"hide new secretions from the parental units ', 'ok " fine']
    assert [e.label for e in examples] == ["0", "1"]
    assert [e.line for e in examples] == [2, 3]


def test_suffix_is_case_insensitive(tmp_path):
    examples = read(write_csv(tmp_path / "D.CSV", ["text", "label"], ROWS))
    assert len(examples) == len(ROWS)


def test_extra_columns_and_column_order_do_not_matter(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["id", "label", "text"], [(1, "pos", "a"), (2, "neg", "b")])
    assert [(e.text, e.label) for e in read(path)] == [("a", "pos"), ("b", "neg")]


def test_jsonl_integer_and_float_labels_become_integer_strings(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0.0}, {"text": "c", "label": "2"}])
    assert [e.label for e in read(path)] == ["1", "0", "2"]


def test_jsonl_invalid_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', encoding="utf-8")
    message = read_error(path)
    assert str(path) in message
    assert "line 3" in message


def test_jsonl_missing_key_lists_the_keys_found(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"sentence": "b", "label": "y"}])
    message = read_error(path)
    assert "line 2" in message
    assert "'text'" in message
    assert "sentence" in message


def test_jsonl_text_with_unicode_line_separator_is_one_record(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "first\u2028second", "label": "a"}, {"text": "x\x85y", "label": "b"}])
    examples = read(path)
    assert [e.text for e in examples] == ["first\u2028second", "x\x85y"]
    assert [e.line for e in examples] == [1, 2]


# --- column overrides --------------------------------------------------------------------------------


def test_per_split_column_overrides_through_load_splits(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], [("t1", "a"), ("t2", "b"), ("t3", "a")])
    val = write_csv(tmp_path / "val.csv", ["content", "label"], [("v1", "b"), ("v2", "a")])
    test = write_csv(tmp_path / "test.csv", ["content", "y"], [("s1", "a"), ("s2", "b")])
    config = DataConfig(
        train_file=str(train),
        val_file=str(val),
        test_file=str(test),
        text_column="content",  # val and test fall back to this
        columns=ColumnOverrides(train=ColumnNames(text_column="sentence"), test=ColumnNames(label_column="y")),
    )
    splits = load_splits(config, seed=0)
    assert [e.text for e in splits.train] == ["t1", "t2", "t3"]
    assert [e.text for e in splits.val] == ["v1", "v2"]
    assert [e.text for e in splits.test] == ["s1", "s2"]
    assert [e.label for e in splits.test] == ["a", "b"]
    assert splits.label_names == ["a", "b"]
    assert splits.sizes() == {"train": 3, "val": 2, "test": 2}


def test_without_the_override_the_train_file_is_rejected(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["sentence", "label"], [("t1", "a"), ("t2", "b")])
    val = write_csv(tmp_path / "val.csv", ["content", "label"], [("v1", "b")])
    config = DataConfig(train_file=str(train), val_file=str(val), test_file=str(val), text_column="content")
    with pytest.raises(UserInputError) as excinfo:
        load_splits(config, seed=0)
    message = str(excinfo.value)
    assert str(train) in message
    assert "data.columns.train.text_column" in message


# --- file-level problems -----------------------------------------------------------------------------


def test_missing_text_column_names_file_line_and_columns_found(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["sentence", "label", "id"], [("a", "pos", 1)])
    message = read_error(path)
    assert str(path) in message
    assert "line 1" in message
    assert "'text'" in message
    assert "sentence, label, id" in message


def test_missing_label_column_is_reported(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "sentiment"], [("a", "pos")])
    message = read_error(path)
    assert "line 1" in message
    assert "'label'" in message
    assert "text, sentiment" in message


@pytest.mark.parametrize("content", [b"", b"\n\n", b"  \r\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    message = read_error(path)
    assert str(path) in message
    assert "empty" in message


def test_file_with_only_a_byte_order_mark_is_a_user_error(tmp_path):
    path = tmp_path / "bom_only.csv"
    path.write_bytes(b"\xef\xbb\xbf")
    message = read_error(path)
    assert str(path) in message


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_header_only(tmp_path, suffix):
    path = tmp_path / f"header{suffix}"
    path.write_text("text,label\n\n" if suffix == ".csv" else "text\tlabel\n", encoding="utf-8")
    message = read_error(path)
    assert str(path) in message
    assert "no rows" in message


def test_directory_instead_of_file(tmp_path):
    path = tmp_path / "train.csv"
    path.mkdir()
    message = read_error(path)
    assert str(path) in message
    assert "directory" in message


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    message = read_error(path, split="val")
    assert str(path) in message
    assert "not found" in message
    assert "data.val_file" in message


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text,label\na,pos\n", encoding="utf-8")
    message = read_error(path, split="test")
    assert str(path) in message
    assert "'.txt'" in message
    assert "data.test_file" in message


def test_missing_file_through_load_splits(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "x"), ("b", "y")])
    config = DataConfig(train_file=str(train), val_file=str(tmp_path / "val.csv"), test_file=str(train))
    with pytest.raises(UserInputError, match="val.csv"):
        load_splits(config, seed=0)


# --- row-level problems ------------------------------------------------------------------------------


@pytest.mark.parametrize("empty_text", ["", "   "])
def test_empty_text_reports_line_and_column(tmp_path, empty_text):
    path = write_csv(tmp_path / "d.csv", ["review", "label"], [("fine", "pos"), ("ok", "neg"), (empty_text, "pos")])
    message = read_error(path, text_column="review")
    assert str(path) in message
    assert "line 4" in message
    assert "'review'" in message
    assert "empty text" in message


@pytest.mark.parametrize("missing", ["", "NaN", "nan", "None", " null ", "N/A"])
def test_missing_label_reports_line(tmp_path, missing):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("a", "pos"), ("b", missing), ("c", "neg")])
    message = read_error(path)
    assert str(path) in message
    assert "line 3" in message
    assert "missing label" in message


def test_jsonl_null_label_is_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}])
    message = read_error(path)
    assert "line 2" in message
    assert "missing label" in message


def test_bytes_that_are_not_utf8_report_their_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\nfine,pos\ncaf\xe9 au lait,neg\nmore,pos\n")
    message = read_error(path)
    assert str(path) in message
    assert "line 3" in message
    assert "UTF-8" in message


def test_bytes_that_are_not_utf8_report_their_line_after_a_bom(tmp_path):
    path = tmp_path / "bom_latin1.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\na,1\n\xe9b,2\n")
    message = read_error(path)
    assert "line 3" in message


def test_bom_and_crlf_line_endings(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\r\nfirst one,pos\r\nsecond,neg\r\n".encode("utf-8-sig"))
    examples = read(path)
    assert examples == [Example("first one", "pos", 2), Example("second", "neg", 3)]
    for example in examples:
        assert "\r" not in example.text and "\r" not in example.label
        assert "\ufeff" not in example.text


def test_bom_and_crlf_in_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "excel.tsv"
    tsv.write_bytes("text\tlabel\r\nfirst\tpos\r\nsecond\tneg\r\n".encode("utf-8-sig"))
    jsonl = tmp_path / "excel.jsonl"
    jsonl.write_bytes('{"text": "first", "label": "pos"}\r\n{"text": "second", "label": "neg"}\r\n'.encode("utf-8-sig"))
    for path in (tsv, jsonl):
        assert [(e.text, e.label) for e in read(path)] == [("first", "pos"), ("second", "neg")]


def test_multiline_quoted_field_keeps_newline_and_later_line_numbers(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('text,label\n"line one\nline two\nline three",pos\nnext,neg\n,pos\n', encoding="utf-8")
    # record 1 spans lines 2-4, record 2 is on line 5, the bad record on line 6
    message = read_error(path)
    assert "line 6" in message
    assert "empty text" in message
    path.write_text('text,label\n"line one\nline two\nline three",pos\nnext,neg\n', encoding="utf-8")
    examples = read(path)
    assert examples[0] == Example("line one\nline two\nline three", "pos", 2)
    assert examples[1] == Example("next", "neg", 5)


def test_multiline_quoted_field_with_crlf(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'text,label\r\n"a\r\nb",pos\r\n"c",\r\n')
    message = read_error(path)
    assert "line 4" in message
    assert "missing label" in message


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("text,label\n\na,pos\n\n\nb,\n", encoding="utf-8")
    message = read_error(path)
    assert "line 6" in message


@pytest.mark.parametrize("bad_row", ["a,pos,extra", "only-one-field"])
def test_wrong_number_of_fields_reports_line(tmp_path, bad_row):
    path = tmp_path / "d.csv"
    path.write_text(f"text,label\na,pos\nb,neg\n{bad_row}\n", encoding="utf-8")
    message = read_error(path)
    assert str(path) in message
    assert "line 4" in message
    assert "fields" in message


def test_tsv_row_with_a_comma_delimiter_is_a_field_count_error(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\na\tpos\nb,neg\n", encoding="utf-8")
    message = read_error(path)
    assert "line 3" in message


def test_duplicate_column_names(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\na,pos,b\n", encoding="utf-8")
    message = read_error(path)
    assert str(path) in message
    assert "duplicate" in message
    assert "'text'" in message


# --- labels ------------------------------------------------------------------------------------------


def test_whitespace_around_labels_is_stripped(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("a", " pos"), ("b", "pos "), ("c", "neg"), ("d", "\tpos")])
    examples = read(path)
    assert [e.label for e in examples] == ["pos", "pos", "neg", "pos"]
    assert label_names_from(examples, str(path)) == ["neg", "pos"]


def test_text_whitespace_is_kept(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], [("  padded  ", "pos")])
    assert read(path)[0].text == "  padded  "


def test_labels_differing_only_by_case_are_an_error(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "Pos"), ("b", "pos"), ("c", "neg")])
    config = DataConfig(train_file=str(path), val_file=str(path), test_file=str(path))
    with pytest.raises(UserInputError) as excinfo:
        load_splits(config, seed=0)
    message = str(excinfo.value)
    assert str(path) in message
    assert "'Pos'" in message and "'pos'" in message
    assert "'neg'" not in message.split("]")[0].split("[", 1)[-1]  # only the clashing spellings are listed


def test_single_class_is_an_error(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "pos"), ("b", "pos"), ("c", " pos ")])
    config = DataConfig(train_file=str(path), val_file=str(path), test_file=str(path))
    with pytest.raises(UserInputError) as excinfo:
        load_splits(config, seed=0)
    message = str(excinfo.value)
    assert str(path) in message
    assert "two classes" in message
    assert "'pos'" in message


def test_integer_labels_sort_numerically():
    examples = [Example("t", label, 1) for label in ["2", "10", "1", "10", "2"]]
    assert label_names_from(examples, "f.csv") == ["1", "2", "10"]


def test_negative_integer_labels_sort_numerically():
    examples = [Example("t", label, 1) for label in ["1", "-1", "0", "-10"]]
    assert label_names_from(examples, "f.csv") == ["-10", "-1", "0", "1"]


def test_string_labels_sort_alphabetically_and_mixed_labels_do_not_sort_as_integers():
    assert label_names_from([Example("t", l, 1) for l in ["pos", "neg", "neutral"]], "f") == ["neg", "neutral", "pos"]
    assert label_names_from([Example("t", l, 1) for l in ["10", "2", "x"]], "f") == ["10", "2", "x"]


def test_integer_labels_through_load_splits(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "2"), ("b", "10"), ("c", "1")])
    config = DataConfig(train_file=str(path), val_file=str(path), test_file=str(path))
    assert load_splits(config, seed=0).label_names == ["1", "2", "10"]


@pytest.mark.parametrize("split", ["val", "test"])
def test_label_unseen_in_train_names_label_file_and_line(tmp_path, split):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [("a", "pos"), ("b", "neg")])
    other = write_csv(tmp_path / f"{split}.csv", ["text", "label"], [("c", "pos"), ("d", "neutral"), ("e", "neg")])
    files = {"val_file": str(train), "test_file": str(train), f"{split}_file": str(other)}
    config = DataConfig(train_file=str(train), **files)
    with pytest.raises(UserInputError) as excinfo:
        load_splits(config, seed=0)
    message = str(excinfo.value)
    assert "'neutral'" in message
    assert str(other) in message
    assert "line 3" in message
    assert split in message


# --- carving val/test out of train -------------------------------------------------------------------


def carve(tmp_path: Path, counts: dict[str, int], seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], balanced_rows(counts))
    return path, load_splits(train_only_config(path, val_fraction, test_fraction), seed=seed)


def keys(examples: list[Example]) -> list[tuple[str, str, int]]:
    return [(e.text, e.label, e.line) for e in examples]


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.1, 0.1), (0.2, 0.15), (0.1, 0.3)])
def test_stratified_split_sizes_disjointness_and_proportions(tmp_path, val_fraction, test_fraction):
    counts = {"pos": 120, "neg": 60, "neutral": 20}
    total = sum(counts.values())
    path, splits = carve(tmp_path, counts, seed=7, val_fraction=val_fraction, test_fraction=test_fraction)
    everything = read(path)

    assert abs(len(splits.test) - test_fraction * total) <= 1
    assert abs(len(splits.val) - val_fraction * total) <= 1
    assert len(splits.train) + len(splits.val) + len(splits.test) == total

    train, val, test = set(keys(splits.train)), set(keys(splits.val)), set(keys(splits.test))
    assert len(train) == len(splits.train) and len(val) == len(splits.val) and len(test) == len(splits.test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(keys(everything))

    for split, fraction in ((splits.test, test_fraction), (splits.val, val_fraction)):
        per_class = Counter(e.label for e in split)
        for label, count in counts.items():
            assert abs(per_class[label] - count * fraction) <= 1, (label, per_class)
    per_class_train = Counter(e.label for e in splits.train)
    train_fraction = 1 - val_fraction - test_fraction
    for label, count in counts.items():
        assert abs(per_class_train[label] - count * train_fraction) <= 2, (label, per_class_train)

    assert splits.label_names == ["neg", "neutral", "pos"]


def test_carved_split_is_reproducible_for_a_seed_and_differs_for_another(tmp_path):
    counts = {"a": 50, "b": 50}
    _, first = carve(tmp_path, counts, seed=3)
    _, again = carve(tmp_path, counts, seed=3)
    _, other = carve(tmp_path, counts, seed=4)
    for name in ("train", "val", "test"):
        assert keys(getattr(first, name)) == keys(getattr(again, name))
    assert set(keys(first.test)) != set(keys(other.test)) or set(keys(first.val)) != set(keys(other.val))


def test_only_test_is_carved_when_val_file_is_given(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], balanced_rows({"a": 50, "b": 50}))
    val = write_csv(tmp_path / "val.csv", ["text", "label"], [("v", "a"), ("w", "b")])
    config = DataConfig(train_file=str(train), val_file=str(val), test_file=None, test_fraction=0.2)
    splits = load_splits(config, seed=0)
    assert [e.text for e in splits.val] == ["v", "w"]
    assert len(splits.test) == 20
    assert Counter(e.label for e in splits.test) == {"a": 10, "b": 10}
    assert len(splits.train) == 80


def test_only_val_is_carved_when_test_file_is_given(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], balanced_rows({"a": 50, "b": 50}))
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [("v", "a"), ("w", "b")])
    config = DataConfig(train_file=str(train), val_file=None, test_file=str(test), val_fraction=0.3)
    splits = load_splits(config, seed=0)
    assert [e.text for e in splits.test] == ["v", "w"]
    assert len(splits.val) == 30
    assert Counter(e.label for e in splits.val) == {"a": 15, "b": 15}
    assert len(splits.train) == 70


def test_too_few_rows_of_a_class_to_stratify(tmp_path):
    path = write_csv(tmp_path / "train.csv", ["text", "label"], balanced_rows({"common": 40, "rare": 1}))
    with pytest.raises(UserInputError) as excinfo:
        load_splits(train_only_config(path), seed=0)
    message = str(excinfo.value)
    assert str(path) in message
    assert "stratified" in message
