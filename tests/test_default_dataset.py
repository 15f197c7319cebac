"""`finetune prepare-data`: split, write, and leave intact files alone (the download itself is faked)."""

import csv
import io

import pytest

from finetune_pipeline.core import default_dataset
from finetune_pipeline.core.config import DataConfig
from finetune_pipeline.core.data import load_splits


def fake_corpus() -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for index in range(300):
        category = ("fresh", "rotten", "plot")[index % 3]
        writer.writerow([category, f"review   number {index}\nabout {category}", f"movie{index}", "False"])
    writer.writerow(["fresh", "review   number 0\nabout fresh", "duplicate", "False"])  # a duplicate text
    writer.writerow(["rotten", "   ", "empty", "False"])  # an empty text
    return buffer.getvalue().encode("utf-8")


@pytest.fixture
def downloads(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(default_dataset, "fetch_corpus", lambda: calls.append(1) or fake_corpus())
    return calls


def test_prepare_writes_stratified_splits_that_the_pipeline_reads(tmp_path, downloads, capsys):
    folder = default_dataset.prepare_default_dataset(tmp_path / "rt")
    assert "wrote" in capsys.readouterr().out
    splits = load_splits(DataConfig(train_file=str(folder / "train.csv"), val_file=str(folder / "val.csv"),
                                    test_file=str(folder / "test.csv")), seed=0)
    assert splits.sizes() == {"train": 240, "val": 30, "test": 30}  # 300 unique texts, 80/10/10
    assert splits.label_names == ["fresh", "plot", "rotten"]
    assert all(sum(e.label == name for e in splits.val) == 10 for name in splits.label_names)
    texts = [e.text for split in (splits.train, splits.val, splits.test) for e in split]
    assert len(set(texts)) == 300 and "review number 0 about fresh" in texts  # whitespace normalised


def test_prepare_again_does_nothing_and_repairs_a_damaged_file(tmp_path, downloads, capsys):
    folder = default_dataset.prepare_default_dataset(tmp_path / "rt")
    first = (folder / "val.csv").read_bytes()
    default_dataset.prepare_default_dataset(folder)
    assert "nothing to do" in capsys.readouterr().out and len(downloads) == 1
    (folder / "val.csv").write_text("text,label\n", encoding="utf-8")
    default_dataset.prepare_default_dataset(folder)
    assert len(downloads) == 2 and (folder / "val.csv").read_bytes() == first  # same seed, same split
