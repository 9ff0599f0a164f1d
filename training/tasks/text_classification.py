"""Text classification: a pretrained encoder, mean pooling over real tokens, a linear head."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from serving.processing import TextPreprocessor
from training.augment import augment_text
from training.backbones import Backbone
from training.data.text import TextExamples, load_text_splits
from training.evaluate import classification_metrics
from training.recipe import Recipe
from training.tasks.base import Batch, Preprocessing, Splits, Task


class TextPreprocessing(Preprocessing):
    max_length: int = Field(
        128, gt=2, description="tokens per text, [CLS] and [SEP] included; longer texts are truncated"
    )
    # augment_strength: word deletion, swaps, synonym insertion and replacement (training/augment.py)


class EncoderWithHead(nn.Module):
    """A text encoder and a linear head: on the mean of the real tokens (sequence classification,
    what all-MiniLM-L6-v2 was trained to produce, independent of padding) or on every token."""

    def __init__(
        self, backbone: nn.Module, hidden_size: int, num_labels: int, dropout: float, per_token: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)
        self.per_token = per_token

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        if self.per_token:
            return self.head(self.dropout(hidden))
        return self.head(self.dropout(mean_pool(hidden, attention_mask)))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens' states (padding excluded), as all-MiniLM-L6-v2 was trained to pool."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


S = TypeVar("S")  # a split as `load_data` returns it
E = TypeVar("E")  # one example of a split, as `collate` receives it


class TextEncoderTask(Task[TextPreprocessing], Generic[S, E]):
    """What text and token classification share: the encoder's inputs, the server's tokeniser,
    loaders over a split's `examples` batched by `collate`, calibration inputs and the manifest's
    preprocessing. Subclasses say what a split and an example are."""

    modality = "text"
    input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    output_names: ClassVar[list[str]] = ["logits"]

    # The symbolic shape pass cannot follow a BERT graph's dynamic sequence axis; quantising the
    # matrix products and the embedding tables keeps the accuracy of dynamic INT8 and most of its
    # size saving, with ranges fixed at build time (each build's manifest records both).
    quantise_symbolic_shapes = False
    quantise_op_types: ClassVar[list[str]] = ["MatMul", "Gemm", "Gather"]
    # every matrix product feeds a float bias add, GELU or layer norm (benchmarks/transformer_fusion.py)
    quantise_float_outputs: ClassVar[list[str]] = ["MatMul", "Gemm"]
    # Attention's two products (scores, weighted values) in float: no quantise and dequantise around
    # the softmax, so the engine is a little faster and closer to fp32 (benchmarks/transformer_fusion.py)
    quantise_activation_products = False
    preprocessing_model = TextPreprocessing

    def __init__(self, recipe: Recipe, backbone: Backbone) -> None:
        super().__init__(recipe, backbone)
        self.preprocessor = TextPreprocessor(backbone.assets()["tokenizer.json"], self.options.max_length)
        self.strength = self.options.augment_strength
        self.rng = np.random.default_rng(recipe.train.seed)

    @abstractmethod
    def examples(self, split: S) -> Sequence[E]:
        """The split's examples in order, as the loader hands them to `collate`."""

    @abstractmethod
    def collate(self, items: list[E], train: bool = False) -> Batch: ...

    @abstractmethod
    def texts_of(self, split: S) -> list[str]: ...

    def loader(self, split: S, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.recipe.train.seed)
        return DataLoader(
            self.examples(split),  # type: ignore[arg-type]  # torch takes any sequence as a map-style dataset
            batch_size=batch_size or self.recipe.train.batch_size,
            shuffle=shuffle,
            collate_fn=partial(self.collate, train=shuffle),
            generator=generator,
        )

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        """A seeded random sample of training texts through the server's tokeniser, batches of 16."""
        texts = self.texts_of(splits.train)
        picked = np.random.default_rng(self.recipe.train.seed).permutation(len(texts))[:count]
        out = []
        for i in range(0, len(picked), 16):
            batch = self.preprocessor.encode([texts[j] for j in picked[i : i + 16]])
            out.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        return out

    def preprocessing_config(self) -> dict[str, Any]:
        return self.preprocessor.config("tokenizer.json")


class TextClassificationTask(TextEncoderTask[TextExamples, tuple[str, int]]):
    name = "text-classification"
    metric = "accuracy"
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }

    def load_data(self) -> Splits:
        d = self.recipe.data
        s = load_text_splits(d.source, self.recipe.labels, d.val_fraction, d.test_fraction, d.seed, d.limit)
        return Splits(s.train, s.val, s.test, s.label_names)

    def build_model(self, label_names: list[str]) -> nn.Module:
        return EncoderWithHead(
            self.backbone.load(), self.backbone.hidden_size, len(label_names), self.recipe.train.dropout
        )

    def examples(self, split: TextExamples) -> list[tuple[str, int]]:
        return list(zip(split.texts, split.labels))

    def collate(self, items: list[tuple[str, int]], train: bool = False) -> Batch:
        texts = [text for text, _ in items]
        if train and self.strength > 0:
            texts = [augment_text(text, [], self.strength, self.rng)[0] for text in texts]
        batch = self.preprocessor.encode(texts)
        inputs = {
            "input_ids": torch.from_numpy(batch.input_ids),
            "attention_mask": torch.from_numpy(batch.attention_mask),
        }
        return inputs, torch.tensor([label for _, label in items], dtype=torch.long)

    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        return classification_metrics(logits, targets, label_names)

    def texts_of(self, split: TextExamples) -> list[str]:
        return list(split.texts)
