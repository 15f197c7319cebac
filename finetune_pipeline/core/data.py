"""Data: read labelled files (readers.py) -> check them -> split into train/val/test.

What a label is (a class, a set of labels, a number) and how it is read and checked is the task's (task.py);
turning labels into targets, tokenizing and batching come next, in batching.py.

Every problem in a file is reported with the file, the line and the column, because a student
who gets "KeyError: 'text'" from deep inside a library learns nothing.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from finetune_pipeline.core.config import DataConfig
from finetune_pipeline.core.leakage import leakage_report, leakage_warnings, without_train_texts
from finetune_pipeline.core.readers import FileSettings, Record, read_records
from finetune_pipeline.core.task import Label, SingleLabelClassification, Task, unknown_label_error
from finetune_pipeline.errors import UserInputError


@dataclass
class Example:
    text: str
    label: Label  # as the task reads it: a class name, a tuple of names, a number
    line: int  # 1-based line in the source file where the record starts
    text_pair: str | None = None  # the second text of a pair (data.text_pair_column)


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]  # the head's outputs: classes or labels (id i is label_names[i]), or the target's name
    rows_sha256: dict[str, str | None]  # each configured file's rows as read (rows_sha256); None: a carved split
    leakage: dict[str, Any]  # duplicates within train, val/test texts also in train, label conflicts (leakage.py)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_splits(data: DataConfig, seed: int, task: type[Task] = SingleLabelClassification) -> Splits:
    """Read the configured files, labels as the task reads them; carve val/test out of train where no file is
    given."""
    train = read_split(data, "train", data.train_file, task)
    test = read_split(data, "test", data.test_file, task) if data.test_file else None
    val = read_split(data, "val", data.val_file, task) if data.val_file else None
    label_names = label_names_from(train, data.train_file, task, data.columns.train.label_column or data.label_column)
    identities = {name: None if split is None else rows_sha256(split)
                  for name, split in (("train", train), ("val", val), ("test", test))}
    if test is None:
        train, test = carved_split(train, data.test_fraction, seed, "test", data.train_file, task)
    if val is None:
        # val_fraction is a fraction of the whole train file, also when test was carved out first.
        remaining_fraction = data.val_fraction / (1 - (data.test_fraction if data.test_file is None else 0))
        train, val = carved_split(train, remaining_fraction, seed, "val", data.train_file, task)
    for name, split, path in (("val", val, data.val_file), ("test", test, data.test_file)):
        check_labels_seen_in_train(split, label_names, name, path or data.train_file, task)
    leakage = leakage_report(train, val, test)
    leakage["warnings"] = leakage_warnings(leakage, {"val": len(val), "test": len(test)}, data.drop_leaked)
    if data.drop_leaked:
        val, test = (without_train_texts(train, split, name) for name, split in (("val", val), ("test", test)))
        leakage["dropped"] = {"val": leakage["val_in_train"]["normalised"],
                              "test": leakage["test_in_train"]["normalised"]}
    return Splits(train=train, val=val, test=test, label_names=label_names, rows_sha256=identities,
                  leakage=leakage)


def rows_sha256(examples: list[Example]) -> str:
    """One hash of the rows as read, in order: each text, its pair and its label as the task reads it. The same
    rows stored as CSV, Parquet or a DataFrame hash alike (the file's bytes do not); an edited text or label, or
    the rows in another order, do not."""
    digest = hashlib.sha256()
    for example in examples:
        row = [example.text, example.text_pair, example.label]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class FileReading:
    """How a split's file is read: its columns and format, the split's own settings falling back to data.*."""

    text_column: str
    label_column: str
    text_pair_column: str | None
    delimiter: str | None  # None: detected
    encoding: str


def file_reading(data: DataConfig, split: str) -> FileReading:
    columns, file_format = getattr(data.columns, split), getattr(data.formats, split)
    return FileReading(columns.text_column or data.text_column, columns.label_column or data.label_column,
                       columns.text_pair_column or data.text_pair_column,
                       file_format.delimiter or data.delimiter, file_format.encoding or data.encoding)


def reading_of_file(data: DataConfig, path: str | Path) -> FileReading:
    """How a run read path: as the split it was (evaluate on the run's own test file reads it as the run did), else
    with the run's general settings (data.text_column, data.encoding, ...)."""
    for split in ("train", "val", "test"):
        own = getattr(data, f"{split}_file")
        if own is not None and Path(own).expanduser().resolve() == Path(path).expanduser().resolve():
            return file_reading(data, split)
    return FileReading(data.text_column, data.label_column, data.text_pair_column, data.delimiter, data.encoding)


def read_split(data: DataConfig, split: str, path: str, task: type[Task]) -> list[Example]:
    reading = file_reading(data, split)
    try:
        return read_labelled_file(
            path,
            text_column=reading.text_column,
            label_column=reading.label_column,
            settings=split_settings(split),
            delimiter=reading.delimiter,
            encoding=reading.encoding,
            text_pair_column=reading.text_pair_column,
            task=task,
            label_separator=data.label_separator,
        )
    except UserInputError as error:
        origin = data.file_origin(split)
        if origin is None:
            raise
        # Which setting chose the file tells the student what to change: often not the column but the file.
        raise UserInputError(f"{error}\n  (data.{split}_file = {path}: {origin})") from None


def describe_sources(data: DataConfig, seed: int, task: type[Task] = SingleLabelClassification) -> dict[str, str]:
    """split -> where its examples come from, for the dry run and train.log."""
    sources = {"train": with_origin(data.train_file, data.file_origin("train"))}
    for split, fraction in (("val", data.val_fraction), ("test", data.test_fraction)):
        path = getattr(data, f"{split}_file")
        carved = f"{fraction:.0%} of the train file, {'stratified by label' if task.stratified else 'at random'}, seed {seed}"
        origin = data.file_origin(split)
        sources[split] = (with_origin(path, origin) if path else
                          f"{carved} ({origin})" if origin and origin.startswith("split") else carved)
    return sources


def with_origin(path: str, origin: str | None) -> str:
    return path if origin is None else f"{path} ({origin})"


def split_settings(split: str) -> FileSettings:
    """The config keys behind the train, val or test file."""
    return FileSettings(
        file=f"data.{split}_file",
        columns={role: f"data.{role}_column, or data.columns.{split}.{role}_column for this file only"
                 for role in ("text", "text_pair", "label")},
        role=split,
        delimiter=f"data.delimiter (or data.formats.{split}.delimiter for this file only)",
        encoding=f"data.encoding (or data.formats.{split}.encoding for this file only)",
    )


def read_labelled_file(path: Path | str, text_column: str, label_column: str, settings: FileSettings,
                       delimiter: str | None = None, encoding: str = "utf-8", text_pair_column: str | None = None,
                       task: type[Task] = SingleLabelClassification,
                       label_separator: str | None = None) -> list[Example]:
    """Read any supported source (readers.py: CSV, TSV, JSON Lines, Parquet, Excel, datasets) into examples, each
    label as the task reads it (label_separator: several labels in one cell, multi-label only).

    settings: what names this file, its columns and its format (split_settings for a config's split), for messages.
    """
    columns = {"text": text_column, "label": label_column} | ({"text_pair": text_pair_column} if text_pair_column
                                                              else {})
    records = read_records(path, columns, settings, delimiter, encoding)
    if not records:
        raise UserInputError(f"{path}: has a header but no rows; {settings.file} needs labelled examples")
    return [Example(text=checked_text(record, path, text_column),
                    label=task.read_label(record.values["label"], f"{path}, line {record.line}, column "
                                                                  f"'{label_column}'", label_separator),
                    line=record.line,
                    text_pair=checked_text(record, path, text_pair_column, "text_pair") if text_pair_column else None)
            for record in records]


def checked_text(record: Record, path: Path, text_column: str, role: str = "text") -> str:
    """The text as it is (whitespace included: it is part of the input), which must not be empty."""
    text = record.values[role]
    if text is not None and not isinstance(text, str):
        raise UserInputError(f"{path}, line {record.line}, key '{text_column}': the text must be a string")
    if text is None or not text.strip():  # None: an empty cell of a table, or null in JSON
        raise UserInputError(
            f"{path}, line {record.line}, column '{text_column}': empty text; remove the row or fill it in"
        )
    return text


def label_names_from(train: list[Example], path: str, task: type[Task] = SingleLabelClassification,
                     label_column: str = "label") -> list[str]:
    """The head's outputs, from the train split's labels (task.label_space: sorted class names, the union of the
    label sets, or the target's name)."""
    return task.label_space([example.label for example in train], path, label_column)


def check_labels_seen_in_train(split: list[Example], label_names: list[str], name: str, path: str,
                               task: type[Task] = SingleLabelClassification) -> None:
    for example in split:
        unknown = task.unknown_labels(example.label, label_names)
        if unknown:
            raise unknown_label_error(unknown[0], label_names, name, f"{path}, line {example.line}")


def carved_split(
    examples: list[Example], fraction: float, seed: int, name: str, path: str, task: type[Task]
) -> tuple[list[Example], list[Example]]:
    """A seeded share of examples for val or test: stratified by class for single-label data (each class keeps its
    share), plain random otherwise."""
    if task.stratified:
        return stratified_split(examples, fraction, seed, name, path)
    return train_test_split(examples, test_size=fraction, random_state=seed)


def stratified_split(
    examples: list[Example], fraction: float, seed: int, name: str, path: str
) -> tuple[list[Example], list[Example]]:
    labels = [example.label for example in examples]
    try:
        kept, carved = train_test_split(examples, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as err:
        raise UserInputError(
            f"{path}: cannot carve a stratified {name} split of {fraction:.0%} from {len(examples)} rows ({err}); "
            f"give data.{name}_file, or add rows to the rarest class"
        ) from None
    return kept, carved
