"""Data held in memory (a pandas DataFrame or a datasets.Dataset) turned into a data file, for the Python API.

The rest of the package reads files (readers.py), so a table given to `ft.train` becomes one: its text and
label columns are written as JSON Lines, one row per line, to

    OUTPUT.cache_dir/dataframes/<sha256 of the content>.jsonl

and that path is what the config's data.train_file (val_file, test_file) holds. The table then gets exactly
the checks a file gets (empty texts, labels that differ by case, labels unseen in train), and metrics.json
records its sha256 like any data file's: the same rows give the same hash, other rows another, so that
`compare` can tell whether two runs saw the same data. Named by its content, the file is written once and
reused. Line N of the file is row N of the table, counting from 1 (a DataFrame's .iloc[N - 1]).
"""

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from finetune_pipeline.core.readers import FileSettings, dataset_values, table_records
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runtime.files import write_atomically

TABLES_DIR = "dataframes"  # under output.cache_dir
JSON_TYPES = (str, int, float, bool, type(None))  # what a cell may hold; the readers check the rest
LABEL_LIST_TYPES = (str, int)  # a multi-label cell may also hold a list of these


def table_kind(data: Any) -> str | None:
    """'DataFrame' or 'Dataset' for the tables this module stores; None for anything else (such as a path)."""
    # A DataFrame exists only if pandas was imported: looking it up in sys.modules imports nothing.
    pandas, datasets = sys.modules.get("pandas"), sys.modules.get("datasets")
    if pandas is not None and isinstance(data, pandas.DataFrame):
        return "DataFrame"
    if datasets is not None and isinstance(data, datasets.Dataset):
        return "Dataset"
    return None


def stored_origin(kind: str, given_as: str) -> str:
    """What error messages add to a stored table's path: which table it is, and how its lines count the rows."""
    row = ".iloc[N - 1]" if kind == "DataFrame" else "[N - 1]"
    return f"the {kind} given as {given_as}, stored as this file: its line N is the {kind}'s row {row}"


def store_table(table: Any, columns: dict[str, str], settings: FileSettings, source: str,
                cache_dir: str | Path) -> Path:
    """Write the table's columns (role -> column name, e.g. {'text': 'review', 'label': 'sentiment'}) as JSON
    Lines under cache_dir and return the file. source names the table in messages ("the DataFrame given as
    train="); settings name the arguments that choose its columns."""
    if len(table) == 0:  # before the columns: an empty DataFrame() has none, and "no column" would mislead
        raise UserInputError(f"{source}: is empty (no rows); {settings.file} needs labelled examples")
    names, values = column_values(table, list(dict.fromkeys(columns.values())), source)
    records = table_records(source, names, values, columns, settings)  # a missing column or no rows: an error
    content = "".join(json_line({column: record.values[role] for role, column in columns.items()}, source, row)
                      for row, record in enumerate(records, start=1)).encode("utf-8")
    path = Path(cache_dir) / TABLES_DIR / f"{hashlib.sha256(content).hexdigest()}.jsonl"
    if not path.is_file():  # named by its content: a file of that name holds these very rows
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserInputError(f"output.cache_dir '{cache_dir}': cannot create {path.parent} ({err.strerror}); "
                                 f"{source} is stored there") from None
        write_atomically(path, lambda file: file.write(content))
    return path


def column_values(table: Any, wanted: list[str], source: str) -> tuple[list[str], dict[str, list[Any]]]:
    """The table's column names, and the values of those wanted columns that it has, as plain Python values
    (None where a value is missing)."""
    if table_kind(table) == "Dataset":
        return dataset_values(table, wanted)
    return dataframe_values(table, wanted, source)


def dataframe_values(frame: Any, wanted: list[str], source: str) -> tuple[list[str], dict[str, list[Any]]]:
    names = [str(name) for name in frame.columns]  # a header-less read_csv names its columns 0, 1, ...
    values = {}
    for column in [column for column in wanted if column in names]:
        if names.count(column) > 1:
            raise UserInputError(f"{source}: has {names.count(column)} columns named '{column}'; rename all but one")
        series = frame.iloc[:, names.index(column)]
        # NaN, None and pandas.NA all mean "missing": None, which the readers report as an empty text or label
        values[column] = series.astype(object).where(series.notna(), None).tolist()
    return names, values


def json_line(values: dict[str, Any], source: str, row: int) -> str:
    for column, value in values.items():
        if hasattr(value, "tolist"):  # a numpy array (a list column read through pandas or pyarrow)
            value = values[column] = value.tolist()
        is_label_list = isinstance(value, (list, tuple)) and all(isinstance(item, LABEL_LIST_TYPES) for item in value)
        if not isinstance(value, JSON_TYPES) and not is_label_list:
            raise UserInputError(f"{source}, row {row}, column '{column}': holds a {type(value).__name__}; a text "
                                 "must be a string, a label a string, an integer, a number (regression) or a list "
                                 "of labels (multi-label)")
    return json.dumps(values, ensure_ascii=False) + "\n"
