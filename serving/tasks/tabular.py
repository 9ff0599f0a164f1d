"""Table rows (`/tabular/predict`): each request's rows are validated against the model's feature
schema (errors name the row and the column) and encoded; the blocks of several requests run as one
batch. Binary models decide with the threshold chosen on validation at build time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from serving.errors import RequestError
from serving.manifest import Manifest
from serving.processing.postprocess import softmax
from serving.processing.tabular import RowEncoder
from serving.settings import Settings
from serving.tasks.base import Answer, Sample, ServingTask, TaskRequest

# Encoding more rows than this runs in the prepare pool instead of on the event loop.
INLINE_ROWS = 64

Block = dict[str, np.ndarray]


class TabularRequest(TaskRequest):
    rows: list[Any] = Field(
        min_length=1, description="objects of feature → value; each is checked against the model's schema"
    )


class RowPrediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class TabularAnswer(Answer):
    predictions: list[RowPrediction]


class TabularClassification(ServingTask[Block, Block, list[dict[str, Any]]]):
    name = "tabular-classification"
    route = "/tabular/predict"
    client_method = "predict_rows"
    summary = "Classify table rows (credit risk, diagnosis); one prediction per row, in order"
    default_model = "credit-risk"
    request_model = TabularRequest
    response_model = TabularAnswer

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        self.encoder = RowEncoder.from_config(manifest.preprocessing, settings.tabular_range_factor)
        self.labels = manifest.labels
        self.positive = manifest.preprocessing.get("positive_index")
        self.threshold = float(manifest.preprocessing.get("threshold", 0.5))

    def check(self, request: TabularRequest) -> None:
        if len(request.rows) > self.encoder.max_rows:
            raise RequestError(
                f"rows: {len(request.rows)} rows; at most {self.encoder.max_rows} per request", status=413
            )

    def item_fields(self) -> dict[str, dict[str, str]]:
        kinds = {"numeric": "number", "categorical": "string", "boolean": "boolean"}
        return {"rows": {f.name: kinds[f.kind] for f in self.encoder.features}}

    def heavy(self, request: TabularRequest) -> bool:
        return len(request.rows) > INLINE_ROWS

    def prepare(self, request: TabularRequest) -> Block:
        return self.encoder.encode(request.rows)

    def items(self, block: Block) -> list[Block]:
        return [block]

    def run(self, blocks: list[Block]) -> list[list[dict[str, Any]]]:
        feeds = {name: np.concatenate([b[name] for b in blocks]) for name in self.encoder.input_names}
        (logits,) = self.session.run(None, feeds)
        probs = softmax(logits)
        if self.positive is not None:
            chosen = np.where(probs[:, self.positive] >= self.threshold, self.positive, 1 - self.positive)
        else:
            chosen = probs.argmax(axis=1)
        answers = [
            {"label": self.labels[c], "score": float(row[c]), "scores": dict(zip(self.labels, row.tolist()))}
            for c, row in zip(chosen.tolist(), probs)
        ]
        out, start = [], 0
        for b in blocks:
            n = len(b["numeric"])
            out.append(answers[start : start + n])
            start += n
        return out

    def answer(
        self, request: TabularRequest, block: Block, outputs: list[list[dict[str, Any]]]
    ) -> dict[str, Any]:
        return {"predictions": outputs[0]}

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        return [
            Sample(json={**({"model": model} if model else {}), "rows": [row]}) for row in sample_rows(count)
        ]

    @classmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> TabularRequest:
        return TabularRequest(model=model, rows=json_rows(inputs))

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> list[tuple[str, Any]]:
        import json

        return [(json.dumps(row)[:60], p) for row, p in zip(json_rows(inputs), answer["predictions"])]


# The categories of the default (`credit-risk`) model's schema; training's data generator draws
# from the same lists (training/data/tables.py).
EMPLOYMENT = ["salaried", "self_employed", "contract", "unemployed", "retired"]
HOME = ["rent", "mortgage", "own"]
PURPOSES = [
    "debt_consolidation",
    "home_improvement",
    "car",
    "education",
    "medical",
    "small_business",
    "other",
]


def sample_rows(count: int) -> list[dict[str, Any]]:
    """Credit applications in the default (`credit-risk`) model's schema."""
    rng = np.random.default_rng(0)
    return [
        {
            "age": int(rng.integers(21, 75)),
            "employment": EMPLOYMENT[i % len(EMPLOYMENT)],
            "annual_income": float(round(rng.lognormal(10.8, 0.5), -2)),
            "home_ownership": HOME[i % len(HOME)],
            "credit_history_years": float(round(rng.uniform(0, 25), 1)),
            "open_credit_lines": int(rng.integers(1, 15)),
            "credit_utilization": float(round(rng.beta(2, 4), 3)),
            "debt_to_income": float(round(rng.uniform(0, 0.6), 3)),
            "delinquencies_2y": int(rng.poisson(0.3)),
            "loan_purpose": PURPOSES[i % len(PURPOSES)],
            "loan_amount": float(round(rng.uniform(1_000, 40_000), -2)),
            "term_months": [36, 60][i % 2],
            "has_cosigner": bool(i % 11 == 0),
        }
        for i in range(count)
    ]


def json_rows(inputs: list[str]) -> list[Any]:
    """Rows given inline as JSON objects, or files: a JSON array of objects, or JSON Lines."""
    import json

    rows: list[Any] = []
    for given in inputs:
        text = given if given.lstrip().startswith(("{", "[")) else Path(given).read_text(encoding="utf-8")
        try:
            value = json.loads(text)
            rows += value if isinstance(value, list) else [value]
        except json.JSONDecodeError:
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows
