"""Text tasks: sequence classification (`/text/classify`) and entity spans (`/text/entities`).

Texts are tokenised in the batch itself, so a batch is split into length buckets and each bucket is
padded only to its own longest text; the answers go back in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, StrictStr

from serving.errors import RequestError
from serving.manifest import Manifest
from serving.processing.postprocess import softmax, top_label
from serving.settings import Settings
from serving.tasks.base import Answer, Sample, ServingTask, TaskRequest

# Sub-batches of about this many texts of similar length: less padding than one batch padded to the
# longest text, fewer calls than one text at a time.
BUCKET_SIZE = 16


class TextRequest(TaskRequest):
    texts: list[StrictStr] = Field(min_length=1)


class TextTask(ServingTask[list[str], str, dict[str, Any]]):
    """Shared by the text tasks: limits, bucketed tokenising and inference, per-text answers."""

    request_model = TextRequest
    templates: ClassVar[list[str]] = []

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.processing.text import TextPreprocessor

        self.preprocessor = TextPreprocessor.from_config(model_dir, manifest.preprocessing)
        self.input_names = {i.name for i in session.get_inputs()}

    def check(self, request: TextRequest) -> None:
        limit, chars = self.settings.max_items, self.settings.max_text_chars
        if len(request.texts) > limit:
            raise RequestError(f"texts: {len(request.texts)} items; at most {limit} per request", status=413)
        for i, text in enumerate(request.texts):
            if len(text) > chars:
                raise RequestError(f"texts[{i}]: {len(text)} characters; at most {chars}", status=413)

    def prepare(self, request: TextRequest) -> list[str]:
        return request.texts

    def items(self, prepared: list[str]) -> list[str]:
        return prepared

    def run(self, texts: list[str]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = [{}] * len(texts)
        for positions, batch in self.preprocessor.encode_bucketed(texts, BUCKET_SIZE):
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            (logits,) = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})
            probs = softmax(logits)
            for row, pos in enumerate(positions):
                answers[pos] = self.text_answer(
                    texts[pos], probs[row], batch.encodings[row], batch.truncated[row]
                )
        return answers

    def text_answer(self, text: str, probs: np.ndarray, encoding: Any, truncated: bool) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        return [
            Sample(json={**({"model": model} if model else {}), "texts": [t]})
            for t in varied_texts(cls.templates, count)
        ]

    @classmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> TextRequest:
        return TextRequest(model=model, texts=inputs)


class ClassPrediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool = Field(description="the text was longer than the model's window and was cut")


class TextClassifyAnswer(Answer):
    predictions: list[ClassPrediction]


class TextClassification(TextTask):
    name = "text-classification"
    route = "/text/classify"
    client_method = "classify_text"
    summary = "Classify texts (e.g. customer-service intent); one prediction per text, in order"
    default_model = "intent"
    response_model = TextClassifyAnswer
    templates: ClassVar[list[str]] = [
        "what's my current balance",
        "I think someone stole my debit card",
        "send {n} dollars to my sister",
        "there is a charge of ${n} I don't recognise",
        "how do I change my PIN",
        "I'd like to open a savings account",
        "please close my checking account",
        "what are your mortgage rates for {n} years",
        "I moved, update my address",
        "let me talk to a real person",
        "can I afford a ${n} purchase right now",
        "my card was swallowed by the ATM",
        "transfer {n} from savings to checking tomorrow",
        "I was charged twice for the same order #{n}",
        "forgot my pin after {n} tries and now it's locked",
        "how much can I borrow for a car loan of {n}k",
        "change my phone number to 555-01{n}",
        "this bot is useless, get me an agent",
        "open a joint account with my partner",
        "I'm leaving the bank, shut everything down",
    ]

    def text_answer(self, text: str, probs: np.ndarray, encoding: Any, truncated: bool) -> dict[str, Any]:
        (answer,) = top_label(probs[None], self.manifest.labels)
        answer["truncated"] = truncated
        return answer

    def answer(
        self, request: TextRequest, prepared: list[str], outputs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {"predictions": outputs}


class Entity(BaseModel):
    text: str
    label: str
    start: int = Field(description="character offset into the original text")
    end: int
    score: float


class EntitiesAnswer(Answer):
    predictions: list[list[Entity]]
    truncated: list[bool]


class TokenClassification(TextTask):
    name = "token-classification"
    route = "/text/entities"
    client_method = "extract_entities"
    summary = "Entities in texts, as character spans into each original text"
    default_model = "entities"
    response_model = EntitiesAnswer
    templates: ClassVar[list[str]] = [
        "Send ${n} to Maria Lopez at Chase in Denver on March 3rd",
        "Pay {n} dollars to Ahmed Khan by next Friday",
        "I flew Delta from Boston to Paris on 03/04/2025 and paid €{n}",
        "Refund {n} euros from Amazon to Yuki Tanaka",
        "Dr Priya Natarajan from Vodafone called me in Mumbai last Monday",
        "my rent of ${n} to Mr Okafor is due on the 5th",
        "Lufthansa charged £{n} for my flight to Berlin on 12 May",
        "Chen Wei at HSBC said the wire of {n} dollars left yesterday",
    ]

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        from serving.processing import spans

        self.spans = spans

    def text_answer(self, text: str, probs: np.ndarray, encoding: Any, truncated: bool) -> dict[str, Any]:
        words = self.spans.words_from_encoding(encoding, probs, self.manifest.labels)
        return {"entities": self.spans.decode_spans(text, words), "truncated": truncated}

    def answer(
        self, request: TextRequest, prepared: list[str], outputs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "predictions": [o["entities"] for o in outputs],
            "truncated": [o["truncated"] for o in outputs],
        }

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> list[tuple[str, Any]]:
        return list(zip(inputs, zip(answer["predictions"], answer["truncated"])))

    @staticmethod
    def cli_line(given: str, prediction: Any) -> str:
        entities, truncated = prediction
        found = ", ".join(
            f"{e['label']} {e['text']!r} [{e['start']}:{e['end']}] {e['score']:.2f}" for e in entities
        )
        return f"{given}\n  → {found or 'no entities'}{' (truncated)' if truncated else ''}"


_OPENERS = ("", "hi, ", "hello! ", "excuse me, ", "quick question: ")
_CLOSERS = ("", " please", ", thanks", " asap", " today")


def varied_texts(templates: list[str], count: int) -> list[str]:
    """Distinct texts: every (template, opener, closer) combination once before any repeats."""
    t, o = len(templates), len(_OPENERS)
    return [
        _OPENERS[(i // t) % o]
        + templates[i % t].format(n=17 + (i * 37) % 983)
        + _CLOSERS[(i // (t * o)) % len(_CLOSERS)]
        for i in range(count)
    ]
