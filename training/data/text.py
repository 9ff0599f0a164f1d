"""Labelled text for classification: CSV or JSONL files with `text` and `label` fields.

CSV: a header row naming at least `text` and `label` (other columns are ignored).
JSONL: one object per line with "text" and "label" keys.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass
class TextExamples:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TextSplits:
    train: TextExamples
    val: TextExamples
    test: TextExamples
    label_names: list[str]


def resolve_source(source: str) -> Path:
    if source.startswith("builtin:"):
        return BUILTIN_DIR / source.removeprefix("builtin:")
    return Path(source).expanduser()


def read_labelled_texts(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
                raise ValueError(f'{path}:{n}: each line needs "text" and "label"')
            rows.append((str(obj["text"]), str(obj["label"])))
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: CSV header lacks column(s) {sorted(missing)}")
            rows = [(r["text"], r["label"]) for r in reader]
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def load_text_splits(
    source: str,
    label_names: list[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    limit: int | None = None,
) -> TextSplits:
    """Deterministic stratified train/val/test split of a labelled text file."""
    rows = read_labelled_texts(resolve_source(source))
    names = label_names or sorted({label for _, label in rows})
    unknown = sorted({label for _, label in rows} - set(names))
    if unknown:
        raise ValueError(f"data has labels not in the recipe: {unknown}")
    texts = [t for t, _ in rows]
    labels = [names.index(label) for _, label in rows]
    if limit is not None and limit < len(texts):
        texts, _, labels, _ = train_test_split(
            texts, labels, train_size=limit, random_state=seed, stratify=labels
        )
    rest_t, test_t, rest_y, test_y = train_test_split(
        texts, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    val_share = val_fraction / (1 - test_fraction)
    train_t, val_t, train_y, val_y = train_test_split(
        rest_t, rest_y, test_size=val_share, random_state=seed, stratify=rest_y
    )
    return TextSplits(
        TextExamples(train_t, train_y), TextExamples(val_t, val_y), TextExamples(test_t, test_y), names
    )
