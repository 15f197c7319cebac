"""Does the backbone know the texts' language? Its tokenizer tells.

A tokenizer learned on a language cuts its words into one or two pieces: all-MiniLM-L6-v2 makes about
1.3 tokens of an English word. On a language it never saw it falls back to single letters (about 5
tokens per Russian word) or to its unknown token, and the backbone's vectors then carry little
meaning: training runs, but ends near the majority-class score. Measured per split, before training.
"""

import unicodedata
from collections import Counter
from typing import Any

from transformers import PreTrainedTokenizerBase

from finetune_pipeline.core.batching import TokenizedSplit
from finetune_pipeline.core.data import Example

# A known language stays well below (English on MiniLM: 1.3 tokens per word); letter by letter is 4 to 6.
TOKENS_PER_WORD_LIMIT = 2.5
UNKNOWN_SHARE_LIMIT = 0.05
# Scripts written without spaces between words: their "words" are whole phrases, so only unknown tokens count.
UNSPACED_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN"}
SUGGESTED_BACKBONES = {
    "CYRILLIC": ["cointegrated/rubert-tiny2", "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"],
}
MULTILINGUAL_BACKBONES = ["sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", "xlm-roberta-base"]
SAMPLE_CHARACTERS = 200_000  # enough letters to name the script of a split


def dominant_script(texts: list[str]) -> str:
    """The script most letters belong to: 'LATIN', 'CYRILLIC', 'CJK', ... (the first word of the Unicode name)."""
    counts: Counter[str] = Counter()
    seen = 0
    for text in texts:
        for character in text:
            if character.isalpha():
                counts[unicodedata.name(character, "UNKNOWN").split()[0]] += 1
        seen += len(text)
        if seen > SAMPLE_CHARACTERS:
            break
    return counts.most_common(1)[0][0] if counts else "UNKNOWN"


def split_statistics(examples: list[Example], split: TokenizedSplit,
                     tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Tokens per whitespace-separated word (before truncation, special tokens left out), the share of unknown
    tokens, and the texts' script; a text pair's two texts both count."""
    texts = [text for example in examples for text in (example.text, example.text_pair) if text is not None]
    specials = tokenizer.num_special_tokens_to_add(pair=bool(examples) and examples[0].text_pair is not None)
    words = sum(len(text.split()) for text in texts)
    tokens = sum(max(length - specials, 0) for length in split.untruncated_lengths)
    kept = sum(max(len(ids) - specials, 0) for ids in split.input_ids)  # [CLS] and [SEP] are never unknown
    unknown_id = tokenizer.unk_token_id
    unknown = 0 if unknown_id is None else sum(ids.count(unknown_id) for ids in split.input_ids)
    return {
        "script": dominant_script(texts),
        "tokens_per_word": tokens / words if words else 0.0,
        "unknown_token_share": unknown / kept if kept else 0.0,
    }


def tokenization_report(splits: dict[str, list[Example]], tokenized: dict[str, TokenizedSplit],
                        tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, Any]]:
    return {name: split_statistics(splits[name], tokenized[name], tokenizer) for name in tokenized}


def language_warning(report: dict[str, dict[str, Any]], backbone: str) -> str | None:
    """A warning when the train split looks like a language the backbone does not know; None otherwise."""
    train = report["train"]
    too_fine = train["script"] not in UNSPACED_SCRIPTS and train["tokens_per_word"] > TOKENS_PER_WORD_LIMIT
    too_unknown = train["unknown_token_share"] > UNKNOWN_SHARE_LIMIT
    if not (too_fine or too_unknown):
        return None
    found = []
    if too_fine:
        found.append(f"{train['tokens_per_word']:.1f} tokens per word (a language it knows: 1 to 2)")
    if too_unknown:
        found.append(f"{train['unknown_token_share']:.0%} unknown tokens")
    suggestions = SUGGESTED_BACKBONES.get(train["script"], MULTILINGUAL_BACKBONES)
    script = train["script"].capitalize()
    return (f"the backbone '{backbone}' probably does not know the language of these texts: its tokenizer cuts the "
            f"train texts ({script} script) into {' and '.join(found)}. Training runs, but expect scores near the "
            f"majority class. A backbone that reads {script} texts, e.g. "
            f"{' or '.join(repr(name) for name in suggestions)}: --set model.backbone={suggestions[0]}")
