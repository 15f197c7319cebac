"""Data: read labelled files (readers.py) -> check them -> map labels to ids -> split into train/val/test.

Tokenizing and batching come next, in batching.py.

Every problem in a file is reported with the file, the line and the column, because a student
who gets "KeyError: 'text'" from deep inside a library learns nothing.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from finetune_pipeline.core.config import DataConfig
from finetune_pipeline.core.readers import FileSettings, Record, read_records
from finetune_pipeline.errors import UserInputError

MISSING_LABEL_SPELLINGS = {"", "nan", "none", "null", "na", "n/a"}


@dataclass
class Example:
    text: str
    label: str  # always a string here; label ids are assigned once, from the train split
    line: int  # 1-based line in the source file where the record starts


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    label_names: list[str]  # label id i is label_names[i]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_splits(data: DataConfig, seed: int) -> Splits:
    """Read the configured files; carve val/test out of train where no file is given."""
    train = read_split(data, "train", data.train_file)
    test = read_split(data, "test", data.test_file) if data.test_file else None
    val = read_split(data, "val", data.val_file) if data.val_file else None
    label_names = label_names_from(train, data.train_file)
    if test is None:
        train, test = stratified_split(train, data.test_fraction, seed, "test", data.train_file)
    if val is None:
        # val_fraction is a fraction of the whole train file, also when test was carved out first.
        remaining_fraction = data.val_fraction / (1 - (data.test_fraction if data.test_file is None else 0))
        train, val = stratified_split(train, remaining_fraction, seed, "val", data.train_file)
    for name, split, path in (("val", val, data.val_file), ("test", test, data.test_file)):
        check_labels_seen_in_train(split, label_names, name, path or data.train_file)
    return Splits(train=train, val=val, test=test, label_names=label_names)


def read_split(data: DataConfig, split: str, path: str) -> list[Example]:
    columns, file_format = getattr(data.columns, split), getattr(data.formats, split)
    try:
        return read_labelled_file(
            path,
            text_column=columns.text_column or data.text_column,
            label_column=columns.label_column or data.label_column,
            settings=split_settings(split),
            delimiter=file_format.delimiter or data.delimiter,
            encoding=file_format.encoding or data.encoding,
        )
    except UserInputError as error:
        origin = data.file_origin(split)
        if origin is None:
            raise
        # Which setting chose the file tells the student what to change: often not the column but the file.
        raise UserInputError(f"{error}\n  (data.{split}_file = {path}: {origin})") from None


def describe_sources(data: DataConfig, seed: int) -> dict[str, str]:
    """split -> where its examples come from, for the dry run and train.log."""
    sources = {"train": with_origin(data.train_file, data.file_origin("train"))}
    for split, fraction in (("val", data.val_fraction), ("test", data.test_fraction)):
        path = getattr(data, f"{split}_file")
        carved = f"{fraction:.0%} of the train file, stratified by label, seed {seed}"
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
                 for role in ("text", "label")},
        role=split,
        delimiter=f"data.delimiter (or data.formats.{split}.delimiter for this file only)",
        encoding=f"data.encoding (or data.formats.{split}.encoding for this file only)",
    )


def read_labelled_file(path: Path | str, text_column: str, label_column: str, settings: FileSettings,
                       delimiter: str | None = None, encoding: str = "utf-8") -> list[Example]:
    """Read any supported source (readers.py: CSV, TSV, JSON Lines, Parquet, Excel, datasets) into examples.

    settings: what names this file, its columns and its format (split_settings for a config's split), for messages.
    """
    records = read_records(path, {"text": text_column, "label": label_column}, settings, delimiter, encoding)
    if not records:
        raise UserInputError(f"{path}: has a header but no rows; {settings.file} needs labelled examples")
    return [Example(text=checked_text(record, path, text_column), label=checked_label(record, path, label_column),
                    line=record.line) for record in records]


def checked_text(record: Record, path: Path, text_column: str) -> str:
    """The text as it is (whitespace included: it is part of the input), which must not be empty."""
    text = record.values["text"]
    if text is not None and not isinstance(text, str):
        raise UserInputError(f"{path}, line {record.line}, key '{text_column}': the text must be a string")
    if text is None or not text.strip():  # None: an empty cell of a table, or null in JSON
        raise UserInputError(
            f"{path}, line {record.line}, column '{text_column}': empty text; remove the row or fill it in"
        )
    return text


def checked_label(record: Record, path: Path, label_column: str) -> str:
    """The label as a string without surrounding whitespace; JSON's 1 and 1.0 both become '1'."""
    label = record.values["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int, float, type(None))):
        raise UserInputError(
            f"{path}, line {record.line}, key '{label_column}': a label must be a string or an integer"
        )
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    label = "" if label is None else str(label).strip()  # ' positive' and 'positive' are one label
    if label.lower() in MISSING_LABEL_SPELLINGS:
        raise UserInputError(
            f"{path}, line {record.line}, column '{label_column}': missing label ({label!r}); "
            "remove the row or label it"
        )
    return label


def label_names_from(train: list[Example], path: str) -> list[str]:
    """Sorted label names (numerically when every label is an integer): label id = position."""
    names = sorted({example.label for example in train})
    if all(re.fullmatch(r"-?\d+", name) for name in names):
        names.sort(key=int)
    by_casefold: dict[str, list[str]] = {}
    for name in names:
        by_casefold.setdefault(name.casefold(), []).append(name)
    clashes = [spellings for spellings in by_casefold.values() if len(spellings) > 1]
    if clashes:
        raise UserInputError(
            f"{path}: labels that differ only by upper/lower case: {clashes}; they would become different "
            "classes. Spell each label one way in the data"
        )
    if len(names) < 2:
        raise UserInputError(f"{path}: every row has the label {names}; a classifier needs at least two classes")
    return names


def check_labels_seen_in_train(split: list[Example], label_names: list[str], name: str, path: str) -> None:
    known = set(label_names)
    by_casefold = {label.casefold(): label for label in label_names}
    for example in split:
        if example.label not in known:
            close = by_casefold.get(example.label.casefold())
            did_you_mean = f". Did you mean {close!r}?" if close else ""
            raise UserInputError(
                f"{path}, line {example.line}: {name} label {example.label!r} never occurs in the train split "
                f"(train labels: {label_names}); the model cannot predict a class it never saw{did_you_mean}"
            )


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
