"""Duplicates and leakage: texts that appear twice, in train and in val or test, or with two labels.

A val or test text that is also in train is scored by memory, not by skill: the score of such a split overstates
what the model does on new texts. Scraped data and students' own spreadsheets hold such repeats more often than
not (the default dataset drops exact duplicates when it is prepared; nothing else is cleaned). So every run
counts, at load time:

    within train   rows whose text another train row already has (exact, and normalised)
    across splits  val and test rows whose text is in train (exact, and normalised)
    label conflicts  normalised texts found with two or more different labels (label noise), in all splits at once

"Normalised" is what a reader would still call the same text: Unicode NFKC, case-folded, every run of whitespace
and punctuation made one space. A text pair is one text: both halves must match. data.drop_leaked removes from val
and test the rows whose normalised text is in train (the counts, and what was dropped, are recorded).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from finetune_pipeline.errors import UserInputError

if TYPE_CHECKING:  # data.py asks this module, which only reads its examples
    from finetune_pipeline.core.data import Example

LEAKAGE_COUNTS = ("train_repeats", "val_in_train", "test_in_train")  # the Overlap entries of a report
EXAMPLES_SHOWN = 3  # texts quoted per kind: enough to recognise the problem
QUOTED_CHARACTERS = 80
NOT_WORD = re.compile(r"[\W_]+")  # whitespace and punctuation (and symbols): one separator


def normalised(text: str) -> str:
    return NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(example: Example) -> tuple[str, str | None]:
    return example.text, example.text_pair


def normalised_key(example: Example) -> tuple[str, str | None]:
    return normalised(example.text), None if example.text_pair is None else normalised(example.text_pair)


def quoted(example: Example) -> str:
    text = example.text if example.text_pair is None else f"{example.text} / {example.text_pair}"
    return text if len(text) <= QUOTED_CHARACTERS else text[: QUOTED_CHARACTERS - 1] + "…"


@dataclass
class Overlap:
    """Rows of a split whose text is found elsewhere (in train, or earlier in train), exactly and normalised."""

    exact: int
    normalised: int
    examples: list[str]  # a few of the normalised matches, quoted

    def as_json(self) -> dict[str, Any]:
        return {"exact": self.exact, "normalised": self.normalised, "examples": self.examples}


def repeats_within(examples: list[Example]) -> Overlap:
    """Rows of train whose text an earlier row already has."""
    counts = {}
    for key in (exact_key, normalised_key):
        seen: set[tuple[str, str | None]] = set()
        repeated = []
        for example in examples:
            if key(example) in seen:
                repeated.append(example)
            seen.add(key(example))
        counts[key] = repeated
    return Overlap(len(counts[exact_key]), len(counts[normalised_key]),
                   [quoted(example) for example in counts[normalised_key][:EXAMPLES_SHOWN]])


def shared_with(train: list[Example], split: list[Example]) -> Overlap:
    """Rows of split whose text is in train."""
    exact = {exact_key(example) for example in train}
    near = {normalised_key(example) for example in train}
    shared = [example for example in split if normalised_key(example) in near]
    return Overlap(sum(exact_key(example) in exact for example in split), len(shared),
                   [quoted(example) for example in shared[:EXAMPLES_SHOWN]])


def label_conflicts(splits: dict[str, list[Example]]) -> dict[str, Any]:
    """Normalised texts found with more than one label, over every split: their count and a few of them."""
    labels: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    first: dict[tuple[str, str | None], Example] = {}
    for examples in splits.values():
        for example in examples:
            key = normalised_key(example)
            labels[key].add(example.label if isinstance(example.label, str) else json.dumps(example.label))
            first.setdefault(key, example)
    conflicting = [key for key, found in labels.items() if len(found) > 1]
    return {"texts": len(conflicting),
            "examples": [f"{quoted(first[key])} ({', '.join(sorted(labels[key]))})"
                         for key in conflicting[:EXAMPLES_SHOWN]]}


def leakage_report(train: list[Example], val: list[Example], test: list[Example]) -> dict[str, Any]:
    """What metrics.json records as `leakage` (before any row is dropped)."""
    return {
        "train_repeats": repeats_within(train).as_json(),
        "val_in_train": shared_with(train, val).as_json(),
        "test_in_train": shared_with(train, test).as_json(),
        "label_conflicts": label_conflicts({"train": train, "val": val, "test": test}),
    }


def without_train_texts(train: list[Example], split: list[Example], name: str) -> list[Example]:
    """split without the rows whose normalised text is in train (data.drop_leaked)."""
    near = {normalised_key(example) for example in train}
    kept = [example for example in split if normalised_key(example) not in near]
    if not kept:
        raise UserInputError(f"data.drop_leaked: every {name} text is also in train, so no {name} example is left; "
                             f"give a {name} file of texts the train file does not hold, or set data.drop_leaked "
                             "to false")
    return kept


def leakage_warnings(report: dict[str, Any], sizes: dict[str, int], dropped: bool) -> list[str]:
    """A warning per val or test split that shares texts with train: how many, and how far its score could move
    (every shared text answered from memory); one for label conflicts."""
    warnings = []
    for split in ("val", "test"):
        shared = report[f"{split}_in_train"]["normalised"]
        if shared and not dropped:
            warnings.append(
                f"{shared} of the {sizes[split]} {split} texts ({shared / sizes[split]:.1%}) are also in train "
                f"({report[f'{split}_in_train']['exact']} exactly, the rest after normalising case, spaces and "
                f"punctuation), e.g. {report[f'{split}_in_train']['examples'][0]!r}: that share of the {split} "
                f"score measures memory, not skill; set data.drop_leaked to true to score {split} without them")
    conflicts = report["label_conflicts"]
    if conflicts["texts"]:
        warnings.append(f"{conflicts['texts']} text(s) carry different labels in different rows (label noise), "
                        f"e.g. {conflicts['examples'][0]}: no model can get both right")
    return warnings


def describe_leakage(report: dict[str, Any]) -> str:
    """The counts in a line: 'duplicates: train 12 rows repeat a text (3 exactly); val 0 texts also in train, ...'."""
    overlaps = {kind: report[kind] for kind in LEAKAGE_COUNTS}
    dropped = report.get("dropped")
    return ("duplicates (exact, and after normalising case, spaces and punctuation): "
            f"train {overlaps['train_repeats']['normalised']} rows repeat a text "
            f"({overlaps['train_repeats']['exact']} exactly); "
            + "; ".join(f"{split} {overlaps[f'{split}_in_train']['normalised']} texts also in train "
                        f"({overlaps[f'{split}_in_train']['exact']} exactly)"
                        + (", dropped (data.drop_leaked)" if dropped and dropped[split] else "")
                        for split in ("val", "test"))
            + f"; {report['label_conflicts']['texts']} text(s) with two labels")
