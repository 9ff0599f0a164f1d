"""Text embeddings and semantic search: the text encoder, mean pooling over real tokens and L2
normalisation inside the graph, fine-tuned contrastively on (question, document) pairs.

A training batch is its questions, then the documents that answer them and, per question, hard
negatives: other documents of the same category (metadata `category`; any other document when there
is none), each document once. The loss is cross-entropy over question-document cosine similarities
divided by a temperature, the answering document the target and every other document of the batch a
negative (in-batch negatives). Targets mark rows: a question's is the position of its document
(≥ 0), a document's is -1 - its position.

Evaluation splits hold their questions and every document; the metrics rank all documents for each
question (exactly, as the server does below its HNSW threshold): recall@1/5/10 and MRR, recall@5
deciding (early stopping and the INT8 gate). `semantic-search` adds the index of the documents to the
model folder (serving/index.py), embedded by the exported fp32 ONNX model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from pydantic import Field
from torch import nn

from serving.index import Document, IndexOptions
from training.backbones import Backbone
from training.data.faq import Question, load_retrieval_data
from training.evaluate import max_abs_diff
from training.recipe import Recipe
from training.tasks.base import Batch, Splits
from training.tasks.text_classification import TextEncoderTask, TextPreprocessing, mean_pool


class EmbeddingPreprocessing(TextPreprocessing):
    temperature: float = Field(
        0.05, gt=0, description="of the contrastive loss: similarities are divided by it"
    )
    hard_negatives: int = Field(1, ge=0, description="documents of the same category added per question")


class SearchPreprocessing(EmbeddingPreprocessing):
    exact_below: int = Field(
        IndexOptions.exact_below, ge=1, description="documents from which the index is HNSW"
    )
    hnsw_m: int = Field(IndexOptions.hnsw_m, ge=4)
    ef_construction: int = Field(IndexOptions.ef_construction, ge=8)
    ef_search: int = Field(IndexOptions.ef_search, ge=8)


class SentenceEncoder(nn.Module):
    """The encoder's mean over real tokens, scaled to unit length: cosine similarity is a dot product."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.training and input_ids.shape[0] > 1:
            return self.by_length(input_ids, attention_mask)
        return self.forward_rows(input_ids, attention_mask)

    def by_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The same embeddings, the shorter half of the rows padded only to its own longest: a
        training batch holds short questions beside long documents. (Training only: the exported
        graph is the plain forward.)"""
        lengths = attention_mask.sum(dim=1)
        order = torch.argsort(lengths)
        parts = []
        for rows in (order[: len(order) // 2], order[len(order) // 2 :]):
            width = max(1, int(lengths[rows].max()))
            parts.append(self.forward_rows(input_ids[rows, :width], attention_mask[rows, :width]))
        return torch.cat(parts)[torch.argsort(order)]

    def forward_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        return nn.functional.normalize(mean_pool(hidden, attention_mask), dim=-1)


@dataclass
class RetrievalSplit:
    questions: list[Question]
    documents: list[Document]
    with_documents: bool  # evaluation splits rank every document; training batches bring their own

    def __len__(self) -> int:
        return len(self.questions)


def retrieval_metrics(outputs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Recall@1/5/10 and MRR of the questions' rows against every document row (rank 0 = first)."""
    asked = targets >= 0
    documents = outputs[~asked]
    column = {int(-1 - t): c for c, t in enumerate(targets[~asked])}
    relevant = np.array([column[int(t)] for t in targets[asked]])
    queries = outputs[asked]
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), 256):  # bounded memory for large document sets
        scores = queries[start : start + 256] @ documents.T
        own = scores[np.arange(len(scores)), relevant[start : start + 256]]
        ranks[start : start + 256] = (scores > own[:, None]).sum(axis=1)
    return rank_metrics(ranks)


def rank_metrics(ranks: np.ndarray) -> dict[str, Any]:
    """Recall@1/5/10 and MRR from each question's rank of its document (0 = first)."""
    return {
        "recall_at_1": float((ranks < 1).mean()),
        "recall_at_5": float((ranks < 5).mean()),
        "recall_at_10": float((ranks < 10).mean()),
        "mrr": float((1.0 / (ranks + 1)).mean()),
        "n": len(ranks),
    }


def _smoke_slice(
    documents: list[Document], splits: tuple[list[Question], ...], limit: int, seed: int
) -> tuple[list[Document], tuple[list[Question], ...]]:
    """`data.limit` (smoke runs): a seeded half-`limit` of the documents, at most `limit` training
    questions about them and a quarter of that for validation and test; positions renumbered."""
    rng = np.random.default_rng(seed)
    kept = sorted(rng.permutation(len(documents))[: max(16, limit // 2)].tolist())
    renumber = {old: new for new, old in enumerate(kept)}
    out = []
    for split, cap in zip(splits, (limit, max(8, limit // 4), max(8, limit // 4))):
        about = [Question(q.text, renumber[q.document]) for q in split if q.document in renumber]
        out.append([about[i] for i in sorted(rng.permutation(len(about))[:cap].tolist())])
    return [documents[i] for i in kept], tuple(out)


class TextEmbeddingTask(TextEncoderTask[RetrievalSplit, tuple[str, int]]):
    name = "text-embedding"
    metric = "recall_at_5"
    output_names: ClassVar[list[str]] = ["embeddings"]
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "embeddings": {0: "batch"},
    }
    preprocessing_model: type[EmbeddingPreprocessing] = EmbeddingPreprocessing

    def __init__(self, recipe: Recipe, backbone: Backbone) -> None:
        super().__init__(recipe, backbone)
        self.documents: list[Document] = []
        self.negatives: list[np.ndarray] = []  # per document: the others of its category

    def load_data(self) -> Splits:
        d = self.recipe.data
        data = load_retrieval_data(d.source, d.val_fraction, d.test_fraction, d.seed)
        documents, train, val, test = data.documents, data.train, data.val, data.test
        if d.limit is not None and d.limit < len(train):
            documents, (train, val, test) = _smoke_slice(documents, (train, val, test), d.limit, d.seed)
        self.documents = documents
        categories = [doc.metadata.get("category") for doc in documents]
        everyone = np.arange(len(categories))
        self.negatives = [
            everyone[[c == own and i != j for j, c in enumerate(categories)]]
            if own is not None
            else everyone[everyone != i]
            for i, own in enumerate(categories)
        ]
        return Splits(
            RetrievalSplit(train, documents, False),
            RetrievalSplit(val, documents, True),
            RetrievalSplit(test, documents, True),
            [],
        )

    def build_model(self, label_names: list[str]) -> nn.Module:
        return SentenceEncoder(self.backbone.load())

    def examples(self, split: RetrievalSplit) -> list[tuple[str, int]]:
        rows = [(q.text, q.document) for q in split.questions]
        if split.with_documents:
            rows += [(doc.text, -1 - i) for i, doc in enumerate(split.documents)]
        return rows

    def texts_of(self, split: RetrievalSplit) -> list[str]:
        return [q.text for q in split.questions] + [doc.text for doc in split.documents]

    def collate(self, items: list[tuple[str, int]], train: bool = False) -> Batch:
        if train:
            wanted: dict[int, None] = {}  # ordered, each document once
            for _, document in items:
                wanted[document] = None
                others = self.negatives[document]
                count = min(cast(EmbeddingPreprocessing, self.options).hard_negatives, len(others))
                for negative in self.rng.choice(others, count, replace=False) if count else []:
                    wanted[int(negative)] = None
            items = items + [(self.documents[d].text, -1 - d) for d in wanted]
        batch = self.preprocessor.encode([text for text, _ in items])
        inputs = {
            "input_ids": torch.from_numpy(batch.input_ids),
            "attention_mask": torch.from_numpy(batch.attention_mask),
        }
        return inputs, torch.tensor([target for _, target in items], dtype=torch.long)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        asked = targets >= 0
        documents = -1 - targets[~asked]
        scores = outputs[asked] @ outputs[~asked].T / cast(EmbeddingPreprocessing, self.options).temperature
        answer = (targets[asked][:, None] == documents[None, :]).float().argmax(dim=1)
        return nn.functional.cross_entropy(scores, answer)

    def metrics(self, outputs: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        return retrieval_metrics(outputs, targets)

    def parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
        """Embeddings compare by tolerance and by the cosine of each pair (no argmax to compare)."""
        return {
            "max_abs_diff": max_abs_diff(reference, candidate),
            "min_cosine": float((reference * candidate).sum(axis=1).min()),
        }

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """The pretrained encoder's test metrics, before fine-tuning: the baseline the manifest keeps."""
        from training.evaluate import torch_outputs

        outputs, targets = torch_outputs(model, self, self.loader(splits.test, shuffle=False, batch_size=64))
        self.report["pretrained_test"] = self.metrics(outputs, targets, [])


class SemanticSearchTask(TextEmbeddingTask):
    name = "semantic-search"
    preprocessing_model: type[SearchPreprocessing] = SearchPreprocessing

    def __init__(self, recipe: Recipe, backbone: Backbone) -> None:
        super().__init__(recipe, backbone)
        self.index: dict[str, Any] = {}

    def add_files(self, folder: Path, splits: Splits) -> None:
        """The index of the documents, embedded by the exported fp32 model as the server embeds."""
        from serving.index import TextEmbedder, write_index
        from serving.sessions import create_session

        options = cast(SearchPreprocessing, self.options)
        session, _ = create_session(folder / "model.onnx", torch.get_num_threads(), ["CPUExecutionProvider"])
        embedder = TextEmbedder(session, self.preprocessor)
        texts = [doc.text for doc in self.documents]
        vectors = np.concatenate([embedder.embed(texts[i : i + 256])[0] for i in range(0, len(texts), 256)])
        self.index = write_index(
            folder,
            self.documents,
            vectors,
            IndexOptions(options.exact_below, options.hnsw_m, options.ef_construction, options.ef_search),
            torch.get_num_threads(),
            self.recipe.data.source,
        )

    def preprocessing_config(self) -> dict[str, Any]:
        return {**super().preprocessing_config(), **self.index}
