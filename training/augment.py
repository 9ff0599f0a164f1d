"""Training-time augmentation for text and tables, with one `strength` knob per recipe
(`preprocessing.augment_strength`: 0 = off, 1 = the documented default amounts). Image and audio
augmentation live in their tasks (they need the decoded pixels / samples).

- Text: random deletion, adjacent swap, insertion of a synonym and synonym replacement (a small
  shipped lexicon, training/data/synonyms.txt), on whitespace-separated words. For entity
  extraction, words inside an entity are never touched, nothing is inserted inside an entity, and
  the spans' character offsets are recomputed for the new text.
- Tables: Gaussian noise on standardised numeric features; optional mixup (soft targets).

Forecasting has none: its pretraining corpus of generated series is where its variety comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

LEXICON_FILE = Path(__file__).resolve().parent / "data" / "synonyms.txt"
WORD = re.compile(r"\S+")
EDGE = re.compile(r"^(\W*)(.*?)(\W*)$")


def _edges(word: str) -> re.Match[str]:
    """`word` split by EDGE: leading punctuation, core, trailing punctuation."""
    match = EDGE.match(word)
    assert match is not None  # EDGE matches any text without a line break, as words and synonyms are
    return match


@lru_cache(maxsize=4)
def load_lexicon(path: Path = LEXICON_FILE) -> dict[str, list[str]]:
    lexicon: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#") or ":" not in line:
            continue
        word, synonyms = line.split(":", 1)
        lexicon[word.strip().lower()] = [s.strip() for s in synonyms.split(",") if s.strip()]
    return lexicon


@dataclass
class _Word:
    text: str
    gap: str  # the whitespace that followed it
    span: int | None = None  # index of the entity span it belongs to
    start: int = 0  # offset in the original text


def _synonym(word: str, lexicon: dict[str, list[str]], rng: np.random.Generator) -> str | None:
    """A synonym for the word's core (punctuation around it and a leading capital are kept)."""
    lead, core, trail = _edges(word).groups()
    options = lexicon.get(core.lower())
    if not options:
        return None
    choice = options[int(rng.integers(len(options)))]
    if core[:1].isupper():
        choice = choice[:1].upper() + choice[1:]
    return f"{lead}{choice}{trail}"


def augment_text(
    text: str,
    spans: list[tuple[int, int, str]],
    strength: float,
    rng: np.random.Generator,
    lexicon: dict[str, list[str]] | None = None,
) -> tuple[str, list[tuple[int, int, str]]]:
    """One augmented copy of `text`; `spans` (start, end, kind) are kept valid. Each word outside an
    entity is deleted, replaced by a synonym, or swapped with its neighbour with probability
    0.1 × strength each, and about 0.1 × strength × words synonyms are inserted."""
    if strength <= 0:
        return text, spans
    lexicon = load_lexicon() if lexicon is None else lexicon
    p = min(0.5, 0.1 * strength)
    words: list[_Word] = []
    matches = list(WORD.finditer(text))
    for i, m in enumerate(matches):
        owner = next((k for k, (s, e, _) in enumerate(spans) if s < m.end() and m.start() < e), None)
        gap = text[m.end() : matches[i + 1].start()] if i + 1 < len(matches) else text[m.end() :]
        words.append(_Word(m.group(), gap, owner, m.start()))
    lead = text[: matches[0].start()] if matches else text

    free = [w for w in words if w.span is None]
    # deletion (never every free word)
    keep = [w for w in words if w.span is not None or rng.random() >= p]
    if not any(w.span is None for w in keep) and free:
        keep = words
    words = keep
    # synonym replacement
    for w in words:
        if w.span is None and rng.random() < p:
            w.text = _synonym(w.text, lexicon, rng) or w.text
    # adjacent swaps between free words
    for i in range(len(words) - 1):
        a, b = words[i], words[i + 1]
        if a.span is None and b.span is None and rng.random() < p:
            a.text, b.text = b.text, a.text
    # insertions: a synonym of one of the sentence's words, at a boundary not inside an entity
    sources = [s for w in words if w.span is None for s in [_synonym(w.text, lexicon, rng)] if s]
    for _ in range(int(rng.binomial(len(words), p))):
        if not sources:
            break
        at = int(rng.integers(len(words) + 1))
        if 0 < at < len(words) and words[at - 1].span is not None and words[at - 1].span == words[at].span:
            continue  # inside an entity
        words.insert(at, _Word(_edges(sources[int(rng.integers(len(sources)))]).group(2), " "))

    out, new_spans = lead, []
    first_pos: dict[int, tuple[int, _Word]] = {}
    last_pos: dict[int, tuple[int, _Word]] = {}
    for i, w in enumerate(words):
        gap = w.gap if (w.gap or i == len(words) - 1) else " "
        if w.span is not None:
            first_pos.setdefault(w.span, (len(out), w))
            last_pos[w.span] = (len(out), w)
        out += w.text + gap
    for k, (s, e, kind) in enumerate(spans):
        (a_pos, a), (b_pos, b) = first_pos[k], last_pos[k]
        new_spans.append((a_pos + (s - a.start), b_pos + (e - b.start), kind))
    return out, new_spans


def tabular_noise(
    numeric: np.ndarray, columns: list[int], strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise (σ = 0.1 × strength, in standard deviations) on the given standardised columns."""
    if strength <= 0 or not columns:
        return numeric
    out = numeric.copy()
    out[:, columns] += rng.normal(0, 0.1 * strength, (len(out), len(columns))).astype(out.dtype)
    return out


def mixup(
    inputs: dict[str, np.ndarray], targets: np.ndarray, classes: int, alpha: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Mixup for tables: numeric features and one-hot targets mixed with a shuffled copy of the
    batch (λ ~ Beta(α, α)); categorical codes taken from whichever example dominates."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(targets))
    onehot = np.eye(classes, dtype=np.float32)[targets]
    mixed = {"numeric": (lam * inputs["numeric"] + (1 - lam) * inputs["numeric"][perm]).astype(np.float32)}
    if "categorical" in inputs:
        mixed["categorical"] = inputs["categorical"] if lam >= 0.5 else inputs["categorical"][perm]
    return mixed, (lam * onehot + (1 - lam) * onehot[perm]).astype(np.float32)
