"""Token-classification output → entity spans with exact character offsets into the original text.

Per word (the tokenizer's pre-tokenised words), the first sub-token's tag decides, as in training.
BIO is repaired (an I-X that does not continue an X entity starts one), consecutive words of one
entity are merged, and a span's offsets come from the tokenizer's offset mapping, so they index the
original string whatever its unicode, spacing or punctuation. Span score = mean probability of the
words' winning tags. Tokens cut by truncation simply yield no spans: offsets never pass the cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serving.processing.text import replace_surrogates

if TYPE_CHECKING:
    from tokenizers import Encoding


@dataclass
class Word:
    start: int
    end: int
    tag: str
    prob: float


def words_from_encoding(encoding: Encoding, probs: np.ndarray, tags: list[str]) -> list[Word]:
    """One Word per pre-tokenised word: character extent of all its sub-tokens, tag of the first."""
    words: dict[int, Word] = {}
    for position, (word_id, (start, end)) in enumerate(zip(encoding.word_ids, encoding.offsets)):
        if word_id is None or position >= len(probs):
            continue
        if word_id not in words:
            best = int(probs[position].argmax())
            words[word_id] = Word(start, end, tags[best], float(probs[position, best]))
        else:
            words[word_id].end = max(words[word_id].end, end)
    return [words[k] for k in sorted(words)]


def decode_spans(text: str, words: list[Word]) -> list[dict]:
    spans: list[dict] = []
    current: dict | None = None
    scores: list[float] = []

    def close() -> None:
        if current is not None:
            current["score"] = float(np.mean(scores))
            current["text"] = replace_surrogates(text[current["start"] : current["end"]])
            spans.append(current)

    for word in words:
        prefix, _, kind = word.tag.partition("-")
        continues = prefix == "I" and current is not None and current["label"] == kind
        if prefix in ("B", "I") and not continues:  # B-X, or an I-X that must start its own entity
            close()
            current, scores = {"label": kind, "start": word.start, "end": word.end}, [word.prob]
        elif continues and current is not None:  # `continues` implies a current entity
            current["end"] = word.end
            scores.append(word.prob)
        else:  # O
            close()
            current, scores = None, []
    close()
    return [
        {"text": s["text"], "label": s["label"], "start": s["start"], "end": s["end"], "score": s["score"]}
        for s in spans
    ]
