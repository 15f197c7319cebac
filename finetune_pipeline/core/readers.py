"""Reading a labelled source into records: the files people really have.

    .csv       delimited text: the delimiter is detected (, ; tab |) unless data.delimiter sets it
    .tsv       tab-separated, no quoting (as GLUE ships it)
    .jsonl     one JSON object per line
    .parquet   through pyarrow                       (extra: finetune-pipeline[formats])
    .xlsx      the first sheet, header in row 1      (extra: finetune-pipeline[formats])
    a folder written by datasets' save_to_disk, or hf:NAME[:CONFIG][@SPLIT] from the hub (extra: formats)

Text files are decoded with data.encoding (UTF-8 by default, with or without a byte-order mark; a
UTF-16 file, which Excel writes as "Unicode text", is recognised by its byte-order mark). A file that
does not decode gets an error saying what its bytes look like, for example Windows-1251 Cyrillic, the
encoding of a CSV saved by a spreadsheet program in a Russian locale.

Rows of tables (Parquet, Excel, datasets) are numbered like the lines of their CSV export: the header
is line 1, the first row line 2.
"""

import codecs
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_pipeline.core.config import DATASET_SPLIT_NAMES, dataset_location
from finetune_pipeline.errors import UserInputError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")
TABLE_SUFFIXES = (".parquet", ".xlsx")
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, *TABLE_SUFFIXES)
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
HUB_PREFIX = "hf:"
DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes
# The split a datasets folder or hub dataset gives each role when no @SPLIT is named.
DEFAULT_DATASET_SPLITS = {"train": ("train",), **DATASET_SPLIT_NAMES}
FORMATS_EXTRA = 'pip install "finetune-pipeline[formats]"'
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True)
class FileSettings:
    """The settings that name a file, its columns and its format: messages tell the user which one to change."""

    file: str  # "data.val_file" in a config, "--data" on the command line
    columns: dict[str, str]  # role ("text", "label") -> its setting, e.g. "data.text_column" or "--text-column"
    role: str = "train"  # which split a datasets folder gives by default: train | val | test
    delimiter: str | None = None  # the settings for the delimiter and the encoding, where there are such settings
    encoding: str | None = None


@dataclass
class Record:
    """One row (CSV, TSV, a table) or one line (JSON Lines), before its values are checked."""

    line: int  # 1-based line where the record starts (for a table: its row + 1, as in its CSV export)
    values: dict[str, object]  # role -> value: a string in CSV/TSV, any JSON value in JSON Lines and tables
    row: dict[str, object] | None = None  # every column's value, with keep_all (predict writes them back)


def read_records(source: str | Path, columns: dict[str, str], settings: FileSettings, delimiter: str | None = None,
                 encoding: str = "utf-8", keep_all: bool = False) -> list[Record]:
    """The values of the given columns (role -> column name) in every non-blank record of a source; delimiter
    None: detected. keep_all: each record also keeps every column (Record.row), and a blank line inside a
    one-column file is a row with an empty text, so that the records are the file's rows in order."""
    location = str(source)
    if location.startswith(HUB_PREFIX) or is_dataset_folder(dataset_location(location)[0]):
        return dataset_records(location, columns, settings, keep_all)
    path = Path(location)
    check_file(path, settings)
    if path.suffix.lower() == ".parquet":
        return parquet_records(path, columns, settings, keep_all)
    if path.suffix.lower() == ".xlsx":
        return excel_records(path, columns, settings, keep_all)
    text = decode(path.read_bytes(), path, encoding, settings)
    if not text.strip():
        raise UserInputError(f"{path}: file is empty; {settings.file} must name a file with data")
    if path.suffix.lower() == ".jsonl":
        return jsonl_records(text, path, columns, settings, keep_all)
    return delimited_records(text, path, columns, settings, delimiter, keep_all)


def check_file(path: Path, settings: FileSettings, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> None:
    if path.suffix.lower() not in suffixes:
        datasets = ", or name a datasets folder or hf:NAME" if suffixes == SUPPORTED_SUFFIXES else ""
        raise UserInputError(
            f"{path}: unsupported file type '{path.suffix}'; {settings.file} must end in {', '.join(suffixes)}"
            f"{datasets}"
        )
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory (and not one written by datasets' save_to_disk); "
                             f"{settings.file} must name a file")
    if not path.exists():
        raise UserInputError(
            f"{path}: file not found (relative paths start from the current directory, {Path.cwd()}); "
            f"fix {settings.file}, or run `finetune prepare-data` for the default dataset"
        )
    if path.stat().st_size == 0:
        raise UserInputError(f"{path}: file is empty; {settings.file} must name a file with data")


# ---- text: encoding and delimiter ----------------------------------------------------------------------------


def decode(raw: bytes, path: Path, encoding: str, settings: FileSettings) -> str:
    """The file's text. A byte-order mark decides by itself (Excel writes one); otherwise `encoding`, and when
    the bytes are not in it, an error that says what they look like and both fixes."""
    if raw.startswith(UTF16_BOMS):
        return raw.decode("utf-16")
    if codecs.lookup(encoding).name == "utf-8":
        raw = raw.removeprefix(codecs.BOM_UTF8)  # Excel's byte-order mark is not part of the header
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        guess, name = guess_legacy_encoding(raw)
        sample = raw.split(b"\n")[line - 1].decode(guess, errors="replace").strip()[:60]
        setting = f"set {settings.encoding} to \"{guess}\", or " if settings.encoding else ""
        raise UserInputError(
            f"{path}, line {line}: bytes that are not {display_name(encoding)} ({raw[err.start:err.start + 4]!r}); "
            "they decode as "
            f"{name}: «{sample}». If that reads right, {setting}re-save the file as UTF-8 (in a spreadsheet "
            "program: CSV UTF-8)"
        ) from None


def display_name(encoding: str) -> str:
    return "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding


def guess_legacy_encoding(raw: bytes) -> tuple[str, str]:
    """The usual code page of a spreadsheet export that is not UTF-8: (codec, name). A Russian word is written
    entirely in bytes >= 0x80 in Windows-1251, while a word of a Western European language mixes a few accented
    letters into ASCII ones: that tells the two apart."""
    words = [word for word in raw.split() if any(byte >= 0x80 for byte in word)]
    cyrillic_like = sum(all(byte >= 0x80 or not chr(byte).isalpha() for byte in word) for word in words)
    if cyrillic_like * 2 >= len(words):
        return "cp1251", "Windows-1251 Cyrillic"
    return "cp1252", "Windows-1252 Western European"


def delimited_records(text: str, path: Path, columns: dict[str, str], settings: FileSettings,
                      delimiter: str | None, keep_all: bool = False) -> list[Record]:
    is_tsv = path.suffix.lower() == ".tsv"
    if is_tsv or delimiter is None:  # a .tsv is always tab-separated (config.py says so)
        delimiter = "\t" if is_tsv else detect_delimiter(text, columns)
    # csv caps a field at 128 KiB by default, which one long document in a cell exceeds; the whole file is in
    # memory already, so a field can be as long as the text
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if is_tsv else csv.QUOTE_MINIMAL)
    header = next(reader)
    check_unique_names(header, path)
    indices = {role: column_index(header, column, role, path, settings, text, delimiter)
               for role, column in columns.items()}
    records = []
    line = reader.line_num + 1
    blank_rows: list[Record] = []  # in a one-column file with keep_all: empty texts, unless only blank lines follow
    for row in reader:
        if not any(field.strip() for field in row):  # blank line, e.g. at the end of the file
            if keep_all and len(header) == 1:
                blank_rows.append(Record(line, {role: "" for role in indices}, {header[0]: ""}))
            line = reader.line_num + 1
            continue
        records += blank_rows
        blank_rows = []
        if len(row) != len(header):
            setting = f", or set {settings.delimiter} if the file separates fields with another character" \
                if settings.delimiter else ""
            raise UserInputError(
                f"{path}, line {line}: {len(row)} fields but the header has {len(header)} (split on "
                f"{delimiter_name(delimiter)}); check the delimiter and the quoting of that line{setting}"
            )
        records.append(Record(line, {role: row[index] for role, index in indices.items()},
                              dict(zip(header, row, strict=True)) if keep_all else None))
        line = reader.line_num + 1
    return records


def check_unique_names(names: list[str], source: str | Path) -> None:
    """Two columns of one name: which would be read is an accident of the reader, so every reader refuses it."""
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserInputError(f"{source}, line 1: duplicate column name(s) {duplicates}; rename them in the header "
                             "so that each column has its own name")


def header_fields(text: str, delimiter: str) -> list[str]:
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])


def detect_delimiter(text: str, columns: dict[str, str]) -> str:
    """The delimiter on which the header holds the wanted columns; failing that, the one that splits it into the
    most columns (the error about the missing column then shows that split)."""
    headers = {delimiter: header_fields(text, delimiter) for delimiter in CANDIDATE_DELIMITERS}
    for delimiter, header in headers.items():
        if all(column in header for column in columns.values()):
            return delimiter
    return max(CANDIDATE_DELIMITERS, key=lambda delimiter: len(headers[delimiter]))  # ties: the first, ','


def delimiter_name(delimiter: str) -> str:
    return DELIMITER_NAMES.get(delimiter, repr(delimiter))


def column_index(header: list[str], column: str, role: str, path: Path, settings: FileSettings, text: str,
                 delimiter: str) -> int:
    """The column's position; if it is missing, an error with the columns found and how the header splits on
    the other usual delimiters: 'the header splits into 2 columns on ';': review, sentiment'."""
    if column in header:
        return header.index(column)
    others = [f"on {delimiter_name(candidate)} into {len(fields)} columns: {', '.join(fields)}"
              for candidate in CANDIDATE_DELIMITERS
              if candidate != delimiter and len(fields := header_fields(text, candidate)) > 1]
    split = (f" (split on {delimiter_name(delimiter)}{'; the header splits ' if others else ''}{'; '.join(others)})"
             if others or delimiter != "," else "")
    delimiter_fix = f", or {settings.delimiter} if the fields are separated by another character" \
        if others and settings.delimiter else ""
    raise UserInputError(
        f"{path}, line 1: no {role} column '{column}'; columns found: {', '.join(header)}{split}. "
        f"Set {settings.columns[role]}{delimiter_fix}"
    )


def jsonl_records(text: str, path: Path, columns: dict[str, str], settings: FileSettings,
                  keep_all: bool = False) -> list[Record]:
    records = []
    # split on "\n" only: str.splitlines() would also split on U+2028 and friends, legal inside JSON strings
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path}, line {line}: invalid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise UserInputError(
                f"{path}, line {line}: each line must be a JSON object with the keys {', '.join(columns.values())}"
            )
        for role, column in columns.items():
            if column not in record:
                raise UserInputError(
                    f"{path}, line {line}: no key '{column}'; keys found: {', '.join(record)}. "
                    f"Set {settings.columns[role]} to match"
                )
        records.append(Record(line, {role: record[column] for role, column in columns.items()},
                              record if keep_all else None))
    return records


# ---- tables: Parquet, Excel, datasets --------------------------------------------------------------------------


def table_records(source: str | Path, names: list[str], column_values: dict[str, list[Any]],
                  columns: dict[str, str], settings: FileSettings, lines: list[int] | None = None,
                  keep_all: bool = False) -> list[Record]:
    """Records from a table given as its column names and {column: values} (with keep_all: every column's);
    lines: each row's number for messages (default: counting from line 2, below the header)."""
    check_unique_names(names, source)
    for role, column in columns.items():
        if column not in names:
            raise UserInputError(f"{source}: no {role} column '{column}'; columns found: {', '.join(names)}. "
                                 f"Set {settings.columns[role]}")
    rows = len(next(iter(column_values.values()), []))
    records = [Record(lines[index] if lines else index + 2,
                      {role: column_values[column][index] for role, column in columns.items()},
                      {name: values[index] for name, values in column_values.items()} if keep_all else None)
               for index in range(rows)]
    if not records:
        raise UserInputError(f"{source}: has no rows; {settings.file} needs labelled examples")
    return records


def import_optional(module: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UserInputError(f"reading {what} needs the optional package {module.split('.')[0]}: "
                             f"{FORMATS_EXTRA}") from None


def parquet_records(path: Path, columns: dict[str, str], settings: FileSettings, keep_all: bool = False
                    ) -> list[Record]:
    parquet = import_optional("pyarrow.parquet", f"{path} (Parquet)")
    try:
        names = parquet.read_schema(path).names
        check_unique_names(names, path)  # before pyarrow's own error for two columns of one name
        wanted = names if keep_all else [column for column in columns.values() if column in names]
        table = parquet.read_table(path, columns=wanted)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserInputError(f"{path}: not a readable Parquet file ({err})") from None
    return table_records(path, names, {name: table.column(name).to_pylist() for name in wanted}, columns, settings,
                         keep_all=keep_all)


def excel_records(path: Path, columns: dict[str, str], settings: FileSettings, keep_all: bool = False
                  ) -> list[Record]:
    openpyxl = import_optional("openpyxl", f"{path} (Excel)")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises zipfile, KeyError and its own errors for a broken file
        raise UserInputError(f"{path}: not a readable .xlsx workbook ({type(err).__name__}: {err})") from None
    try:
        numbered = filled_rows(workbook.worksheets[0])
        header = [] if not numbered else cell_names(numbered[0][1])
        if not set(columns.values()) <= set(header):
            explain_where_the_header_is(workbook, path, list(columns.values()))
    finally:
        workbook.close()
    if not numbered:
        raise UserInputError(f"{path}: the first sheet is empty; put a header row and the data there")
    lines, rows = [number for number, _ in numbered[1:]], [row for _, row in numbered]
    names = [name for name in header if name]
    values = {name: [row[index] if index < len(row) else None for row in rows[1:]]
              for index, name in enumerate(header) if name}
    text_column = columns.get("text")
    if text_column in values:  # a number typed into the text column is a text all the same
        values[text_column] = [value if value is None or isinstance(value, str) else str(value)
                               for value in values[text_column]]
    return table_records(path, names, values, columns, settings, lines, keep_all)


def filled_rows(sheet: Any) -> list[tuple[int, list[Any]]]:
    """(row number as the spreadsheet shows it, cells) of every row that is not blank."""
    return [(number, list(row)) for number, row in enumerate(sheet.iter_rows(values_only=True), start=1)
            if any(cell is not None and str(cell).strip() for cell in row)]


def cell_names(row: list[Any]) -> list[str]:
    return ["" if cell is None else str(cell).strip() for cell in row]


def explain_where_the_header_is(workbook: Any, path: Path, wanted: list[str]) -> None:
    """Only the first sheet is read, with its header in row 1: if the wanted columns are below a title or on
    another sheet, say so (the usual error, no such column, follows otherwise)."""
    for index, sheet in enumerate(workbook.worksheets):
        for number, row in enumerate(sheet.iter_rows(max_row=20, values_only=True), start=1):
            if set(wanted) <= set(cell_names(list(row))) and (index, number) != (0, 1):
                where = (f"row {number} of the first sheet ('{sheet.title}')" if index == 0
                         else f"row {number} of sheet '{sheet.title}' (sheet {index + 1})")
                fix = ("delete the rows above the header" if index == 0
                       else "move that sheet first, or save it as a file of its own")
                raise UserInputError(f"{path}: the columns {', '.join(wanted)} are in {where}, but only the first "
                                     f"sheet is read, with its header in row 1; {fix}")


def is_dataset_folder(location: str) -> bool:
    path = Path(location)
    return path.is_dir() and any((path / marker).is_file() for marker in DATASET_MARKERS)


def load_dataset_split(location: str, role: str) -> Any:
    """The datasets.Dataset that a folder or hub id (with an optional @SPLIT) names for this role."""
    datasets = import_optional("datasets", f"{location} (a Hugging Face dataset)")
    base, split = dataset_location(location)
    if base.startswith(HUB_PREFIX):  # needs the internet the first time; datasets caches it afterwards
        name, _, config_name = base.removeprefix(HUB_PREFIX).partition(":")
        try:
            loaded = datasets.load_dataset(name, config_name or None)
        except Exception as err:  # network, unknown name, missing config: datasets raises many kinds
            raise UserInputError(f"{location}: could not load the dataset from the hub ({type(err).__name__}: "
                                 f"{err}); check the name (hf:OWNER/NAME[:CONFIG][@SPLIT]) and the connection") from None
    else:
        loaded = datasets.load_from_disk(base)
    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise UserInputError(f"{location}: this dataset has no splits; drop '@{split}'")
        return loaded
    names = list(loaded)
    chosen = split or next((name for name in DEFAULT_DATASET_SPLITS[role] if name in loaded), None)
    if chosen not in loaded:
        raise UserInputError(f"{location}: no split {repr(chosen) if chosen else 'for ' + role}; splits found: {', '.join(names)}. "
                             f"Name one as {base}@SPLIT")
    return loaded[chosen]


def dataset_records(location: str, columns: dict[str, str], settings: FileSettings, keep_all: bool = False
                    ) -> list[Record]:
    dataset = load_dataset_split(location, settings.role)
    names, values = dataset_values(dataset, dataset.column_names if keep_all else list(columns.values()))
    return table_records(location, names, values, columns, settings, keep_all=keep_all)


def dataset_values(dataset: Any, wanted: list[str]) -> tuple[list[str], dict[str, list[Any]]]:
    """A datasets.Dataset's column names, and the values of those wanted columns that it has."""
    present = [column for column in wanted if column in dataset.column_names]
    values = dataset.select_columns(present).to_dict()
    for column in present:  # a ClassLabel column holds ids: the names are the labels people know
        label_names = getattr(dataset.features[column], "names", None)
        if label_names:
            values[column] = [None if value is None else label_names[value] for value in values[column]]
    return list(dataset.column_names), values


# ---- fingerprints ----------------------------------------------------------------------------------------------


def source_sha256(location: str, role: str) -> str:
    """sha256 of what a source holds: a file's bytes, or every file of a datasets folder (by relative path), or
    the cached Arrow files of a hub dataset's split."""
    base, _ = dataset_location(location)
    if base.startswith(HUB_PREFIX):
        dataset = load_dataset_split(location, role)
        return files_sha256([Path(entry["filename"]) for entry in dataset.cache_files], root=None)
    if is_dataset_folder(base):
        folder = Path(base)
        return files_sha256(sorted(path for path in folder.rglob("*") if path.is_file()), root=folder)
    return files_sha256([Path(location)], root=None)


def files_sha256(paths: list[Path], root: Path | None) -> str:
    """One file: the sha256 of its bytes (what `sha256sum` prints). Several: of each name and content in turn."""
    digest = hashlib.sha256()
    for path in paths:
        if len(paths) > 1 or root is not None:
            digest.update(str(path.relative_to(root) if root else path.name).encode() + b"\0")
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
