"""Text embeddings (`/text/embed`) and semantic search over a model's index (`/text/search`).

Two tasks, one kind of model (docs/decisions/0005-embed-and-search-as-two-tasks.md): a
`text-embedding` model turns texts into unit vectors; a `semantic-search` model is an embedding
model with a search index in its folder (serving/index.py), so it answers on both routes. The batcher
runs the ONNX embedding for texts of any request on either route; the search itself runs per request
after it, in `answer`, with that request's `top_k` and `filter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from serving.errors import InputError, RequestError
from serving.manifest import Manifest
from serving.settings import Settings
from serving.tasks.base import Answer, Option, Sample, TaskRequest
from serving.tasks.text import TextRequest, TextTask, varied_texts

MAX_TOP_K = 100
DEFAULT_TOP_K = 5

# FAQ-style questions a bank's customers ask: what samples and load tests send.
QUESTIONS = [
    "how do I activate my new debit card",
    "I lost my credit card on the train",
    "what fees are there on the prepaid card",
    "why was my card declined at the shop",
    "can I use my bank card abroad",
    "how do I open a savings account",
    "what interest does the savings account pay",
    "where can I download my statement",
    "can I pay off my car loan early",
    "what documents do I need for a mortgage",
    "I can't log in to the banking app",
    "how do I reset my online banking password",
    "how long does an international transfer take",
    "how do I cancel a direct debit",
    "my standing order failed, why",
    "am I eligible for a personal loan with bad credit",
    "how do I freeze my card for a few days",
    "the app keeps crashing on my phone",
    "is there a monthly fee on the checking account",
    "how much is left to pay on my mortgage",
]


class EmbedAnswer(Answer):
    embeddings: list[list[float]] = Field(description="one unit-length vector per text, in order")
    truncated: list[bool] = Field(description="per text: it was longer than the model's window and was cut")


class TextEmbedding(TextTask):
    name = "text-embedding"
    route = "/text/embed"
    client_method = "embed_texts"
    summary = "Unit-length embeddings of texts (cosine similarity = dot product), one per text, in order"
    default_model = "faq-search"
    response_model: ClassVar[type[Answer]] = EmbedAnswer
    templates: ClassVar[list[str]] = QUESTIONS

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.index import TextEmbedder

        self.embedder = TextEmbedder(session, self.preprocessor)

    def run(self, texts: list[str]) -> list[Any]:
        """One unit vector per text; its truncation flag beside it (the answer reports it)."""
        vectors, truncated = self.embedder.embed(texts)
        return list(zip(vectors, truncated))

    def answer(self, request: Any, prepared: list[str], outputs: list[Any]) -> dict[str, Any]:
        return {
            "embeddings": [vector.tolist() for vector, _ in outputs],
            "truncated": [flag for _, flag in outputs],
        }

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> list[tuple[str, Any]]:
        return list(zip(inputs, answer["embeddings"]))

    @staticmethod
    def cli_line(given: str, prediction: Any) -> str:
        shown = ", ".join(f"{v:+.3f}" for v in prediction[:4])
        return f"[{shown}, ...] ({len(prediction)} dims)  {given}"


MetadataValue = StrictStr | StrictInt | StrictFloat | StrictBool


class SearchRequest(TaskRequest):
    query: StrictStr | None = Field(None, description="one question (or give `queries`)")
    queries: list[StrictStr] | None = Field(
        None, min_length=1, description="several questions, answered in order"
    )
    top_k: StrictInt = Field(DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="documents per question")
    filter: dict[StrictStr, MetadataValue] | None = Field(
        None, description='only documents whose metadata equal every value given, e.g. {"category": "cards"}'
    )

    @model_validator(mode="after")
    def one_kind_of_query(self) -> SearchRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give either `query` (a string) or `queries` (a list of strings)")
        return self

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])

    def field(self, i: int) -> str:
        return "query" if self.query is not None else f"queries[{i}]"


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity of question and document, -1..1")
    text: str
    metadata: dict[str, Any]


class SearchAnswer(Answer):
    predictions: list[list[SearchHit]] = Field(description="per question, its best documents, best first")


class SemanticSearch(TextEmbedding):
    name = "semantic-search"
    route = "/text/search"
    client_method = "search_texts"
    summary = "The documents of a model's index nearest to each question (optionally filtered by metadata)"
    default_model = "faq-search"
    # takes SearchRequests here, and TextRequests on /text/embed (see the stages below)
    request_model = SearchRequest  # type: ignore[assignment]
    response_model = SearchAnswer
    options: ClassVar[dict[str, Option]] = {
        "top_k": Option(int, "documents per question (default 5)", {"type": "integer", "minimum": 1}),
        "filter": Option(
            str, "metadata the documents must have, as key=value[,key=value]", {"type": "string"}
        ),
    }

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.index import SearchIndex

        self.index = SearchIndex.load(model_dir, manifest.preprocessing, settings.intra_op_threads())

    # A search model is an embedding model: requests of /text/embed (a TextRequest) take the
    # embedding task's stages; the batcher's `run` is the same for both.

    def check(self, request: Any) -> None:
        if not isinstance(request, SearchRequest):
            return super().check(request)
        texts = request.texts()
        if len(texts) > self.settings.max_items:
            raise RequestError(
                f"queries: {len(texts)} items; at most {self.settings.max_items} per request", status=413
            )
        for i, text in enumerate(texts):
            if len(text) > self.settings.max_text_chars:
                raise RequestError(
                    f"{request.field(i)}: {len(text)} characters; at most {self.settings.max_text_chars}",
                    status=413,
                )

    def prepare(self, request: Any) -> list[str]:
        if not isinstance(request, SearchRequest):
            return super().prepare(request)
        texts = request.texts()
        for i, text in enumerate(texts):
            if not text.strip():
                raise InputError(f"{request.field(i)}: empty; send the question's text")
        self.index.check_filter(request.filter)
        return texts

    def answer(self, request: Any, prepared: list[str], outputs: list[Any]) -> dict[str, Any]:
        if not isinstance(request, SearchRequest):
            return super().answer(request, prepared, outputs)
        found = self.index.search(np.stack([vector for vector, _ in outputs]), request.top_k, request.filter)
        return {"predictions": [self.index.hits(hits) for hits in found]}

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        """Questions one at a time; every third with a larger `top_k`, every fifth filtered to a
        category of the FAQ."""
        out = []
        for i, question in enumerate(varied_texts(QUESTIONS, count)):
            body: dict[str, Any] = {**({"model": model} if model else {}), "queries": [question]}
            if i % 3 == 2:
                body["top_k"] = 10
            if i % 5 == 4:
                body["filter"] = {"category": "cards"}
            out.append(Sample(json=body))
        return out

    @classmethod
    def cli_request(  # type: ignore[override]  # `tuneserve predict` on a search model searches
        cls, inputs: list[str], options: dict[str, Any], model: str
    ) -> SearchRequest:
        where: dict[str, Any] | None = None
        if options.get("filter"):
            where = {}
            for pair in str(options["filter"]).split(","):
                key, sep, value = pair.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"--filter: expected key=value[,key=value], got {pair!r}")
                where[key.strip()] = _metadata_value(value.strip())
        return SearchRequest(
            model=model, queries=inputs, top_k=options.get("top_k") or DEFAULT_TOP_K, filter=where
        )

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> list[tuple[str, Any]]:
        return list(zip(inputs, answer["predictions"]))

    @staticmethod
    def cli_line(given: str, prediction: Any) -> str:
        found = "\n".join(f"  {h['score']:.3f}  {h['id']}: {h['text'][:90]}" for h in prediction)
        return f"{given}\n{found or '  no documents'}"


def _metadata_value(text: str) -> Any:
    """A --filter value: a JSON number or boolean as such (metadata may hold them), else the text."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


__all__ = ["EmbedAnswer", "SearchAnswer", "SearchRequest", "SemanticSearch", "TextEmbedding", "TextRequest"]
