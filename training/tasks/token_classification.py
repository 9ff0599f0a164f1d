"""Token classification (entity extraction): the text encoder, a linear tag head per token, BIO tags.

Word-piece alignment: each pre-tokenised word's first sub-token carries the word's tag; the others
(and special tokens, padding) are ignored by the loss and the metrics. Serving decodes the same way
(serving/processing/spans.py), so what is measured is what is served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from training.augment import augment_text
from training.data.entities import SpanExample, load_span_examples
from training.evaluate import IGNORE, token_metrics
from training.tasks.base import Batch, Splits
from training.tasks.text_classification import EncoderWithHead, TextEncoderTask


def bio_tags(entity_types: list[str]) -> list[str]:
    return ["O"] + [f"{prefix}-{kind}" for kind in entity_types for prefix in ("B", "I")]


def word_targets(encoding, spans: list[tuple[int, int, str]], tag_index: dict[str, int]) -> list[int]:
    """Per token: the tag of the word it starts (B- at an entity's first word, I- inside), IGNORE elsewhere."""
    targets, seen = [], set()
    for word_id, (start, _) in zip(encoding.word_ids, encoding.offsets):
        if word_id is None or word_id in seen:
            targets.append(IGNORE)
            continue
        seen.add(word_id)
        tag = "O"
        for s, e, kind in spans:
            if s <= start < e:
                tag = f"{'B' if start == s else 'I'}-{kind}"
                break
        targets.append(tag_index.get(tag, 0))
    return targets


class TokenClassificationTask(TextEncoderTask[list[SpanExample], SpanExample]):
    name = "token-classification"
    metric = "micro_f1"
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }

    def load_data(self) -> Splits:
        d = self.recipe.data
        examples = load_span_examples(d.source, seed=d.seed)
        types = self.recipe.labels or sorted({kind for ex in examples for _, _, kind in ex.spans})
        if d.limit is not None and d.limit < len(examples):
            examples, _ = train_test_split(examples, train_size=d.limit, random_state=d.seed)
        rest, test = train_test_split(examples, test_size=d.test_fraction, random_state=d.seed)
        train, val = train_test_split(
            rest, test_size=d.val_fraction / (1 - d.test_fraction), random_state=d.seed
        )
        tags = bio_tags(types)
        self.tag_index = {t: i for i, t in enumerate(tags)}
        return Splits(train, val, test, tags)

    def build_model(self, label_names: list[str]) -> nn.Module:
        return EncoderWithHead(
            self.backbone.load(),
            self.backbone.hidden_size,
            len(label_names),
            self.recipe.train.dropout,
            per_token=True,
        )

    def collate(self, items: list[SpanExample], train: bool = False) -> Batch:
        if train and self.strength > 0:  # spans stay on their words (training/augment.py)
            items = [SpanExample(*augment_text(ex.text, ex.spans, self.strength, self.rng)) for ex in items]
        batch = self.preprocessor.encode([ex.text for ex in items])
        targets = np.full(batch.input_ids.shape, IGNORE, dtype=np.int64)
        for row, (encoding, ex) in enumerate(zip(batch.encodings, items)):
            row_targets = word_targets(encoding, ex.spans, self.tag_index)
            targets[row, : len(row_targets)] = row_targets
        inputs = {
            "input_ids": torch.from_numpy(batch.input_ids),
            "attention_mask": torch.from_numpy(batch.attention_mask),
        }
        return inputs, torch.from_numpy(targets)

    def examples(self, split: list[SpanExample]) -> list[SpanExample]:
        return split

    def texts_of(self, split: list[SpanExample]) -> list[str]:
        return [ex.text for ex in split]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
        )

    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        return token_metrics(logits, targets, label_names)

    def figures(
        self, folder: Path, outputs: np.ndarray, targets: np.ndarray, splits: Splits, metrics: dict[str, Any]
    ) -> dict[str, Path]:
        """Entity-level F1 per entity type (`token_metrics`' f1_<type>)."""
        from training import figures

        scores = {k.removeprefix("f1_"): v for k, v in metrics.items() if k.startswith("f1_")}
        if not scores:
            return {}
        title = f"{self.recipe.name}: F1 per entity type, test split (micro F1 {metrics['micro_f1']:.4f})"
        return {"entity_f1": figures.entity_f1(folder / "entity_f1.png", scores, title)}
