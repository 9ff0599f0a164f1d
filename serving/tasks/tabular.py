"""Table rows (`/tabular/predict`): each request's rows are validated against the model's feature
schema (errors name the row and the column) and encoded; the blocks of several requests run as one
batch. Binary models decide with the threshold chosen on validation at build time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, StrictBool

from serving.errors import RequestError
from serving.manifest import Manifest
from serving.processing.explain import ShapleySampler
from serving.processing.postprocess import softmax
from serving.processing.tabular import RowEncoder
from serving.processing.transactions import DERIVED, derive, raw_fields
from serving.settings import Settings
from serving.tasks.base import Answer, Option, Sample, ServingTask, TaskRequest

# Encoding more rows than this runs in the prepare pool instead of on the event loop.
INLINE_ROWS = 64

Block = dict[str, np.ndarray]


@dataclass
class Rows:
    """A request's encoded rows, and whether it asked for explanations."""

    feeds: Block
    explain: bool = False

    def __len__(self) -> int:
        return len(self.feeds["numeric"])


class TabularRequest(TaskRequest):
    rows: list[Any] = Field(
        min_length=1, description="objects of feature → value; each is checked against the model's schema"
    )
    explain: StrictBool = Field(
        False,
        description="add each prediction's per-feature contributions (sampled Shapley values; additive: "
        "base + sum(contributions) = value)",
        json_schema_extra={"tensor": False},
    )


class Explanation(BaseModel):
    space: str = Field(description="`log_odds` of `label` (binary models) or its `probability`")
    label: str
    base: float = Field(description="the expected value over the manifest's background sample")
    value: float = Field(description="this row's prediction in `space`")
    contributions: dict[str, float] = Field(description="per feature, largest magnitude first")


class RowPrediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    alert: bool | None = Field(
        None,
        description="models built with an alert budget: whether the row is among the alerts",
        json_schema_extra={"tensor": False},
    )
    anomaly_score: float | None = Field(
        None,
        description="models with an anomaly detector: how unusual the row is (0 ≈ typical, higher = rarer)",
        json_schema_extra={"tensor": False},
    )
    explanation: Explanation | None = Field(
        None, description="with `explain: true`", json_schema_extra={"tensor": False}
    )


class TabularAnswer(Answer):
    predictions: list[RowPrediction]


class TabularClassification(ServingTask[Rows, Rows, list[dict[str, Any]]]):
    name = "tabular-classification"
    route = "/tabular/predict"
    client_method = "predict_rows"
    summary = (
        "Classify table rows (credit risk, diagnosis, card fraud); one prediction per row, in order, "
        "with per-feature explanations on request"
    )
    default_model = "credit-risk"
    request_model = TabularRequest
    response_model = TabularAnswer
    options: ClassVar[dict[str, Option]] = {
        "explain": Option(
            bool, "add per-feature contributions (the top ones are printed)", {"type": "boolean"}
        )
    }

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        config = manifest.preprocessing
        self.encoder = RowEncoder.from_config(config, settings.tabular_range_factor)
        self.labels = manifest.labels
        self.positive = config.get("positive_index")
        self.threshold = float(config.get("threshold", 0.5))
        self.derive = config.get("derive")
        self.alerts = config.get("alert_rate") is not None
        self.anomaly = None
        if config.get("anomaly"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.anomaly = ort.InferenceSession(
                str(model_dir / config["anomaly"]), options, providers=["CPUExecutionProvider"]
            )
        self.sampler: ShapleySampler | None = None
        if config.get("background"):
            background = RowEncoder.from_config(config).encode_all(config["background"])
            self.sampler = ShapleySampler(
                self.encoder.feature_columns(), background, settings.explain_permutations
            )

    def check(self, request: TabularRequest) -> None:
        if len(request.rows) > self.encoder.max_rows:
            raise RequestError(
                f"rows: {len(request.rows)} rows; at most {self.encoder.max_rows} per request", status=413
            )
        if request.explain:
            if self.sampler is None:
                raise RequestError(
                    f"explain: model {self.manifest.name!r} has no background sample in its manifest "
                    "(built before explanations existed); rebuild it to explain its predictions"
                )
            if len(request.rows) > self.settings.max_explain_rows:
                raise RequestError(
                    f"rows: {len(request.rows)} rows with explain: true; at most "
                    f"{self.settings.max_explain_rows} per request (TUNESERVE_MAX_EXPLAIN_ROWS)",
                    status=413,
                )

    def item_fields(self) -> dict[str, dict[str, str]]:
        kinds = {"numeric": "number", "categorical": "string", "boolean": "boolean"}
        fields = {f.name: kinds[f.kind] for f in self.encoder.features}
        if self.derive:
            fields = {k: v for k, v in fields.items() if k not in DERIVED}
            fields |= {name: "string" for name in raw_fields(self.derive)}
        return {"rows": fields}

    def heavy(self, request: TabularRequest) -> bool:
        return len(request.rows) > INLINE_ROWS or request.explain

    def prepare(self, request: TabularRequest) -> Rows:
        rows = derive(request.rows, self.derive) if self.derive else request.rows
        return Rows(self.encoder.encode(rows), request.explain)

    def items(self, block: Rows) -> list[Rows]:
        return [block]

    def run(self, blocks: list[Rows]) -> list[list[dict[str, Any]]]:
        """One session call for the rows of every request in the batch, the background and the
        hybrid rows of every row to explain."""
        parts = [b.feeds for b in blocks]
        explained = [(b, i) for b in blocks if b.explain for i in range(len(b))]
        sampler = self.sampler
        if explained and sampler is not None:
            parts.append(sampler.background)
            parts += [sampler.hybrids({k: v[i : i + 1] for k, v in b.feeds.items()}) for b, i in explained]
        feeds = {name: np.concatenate([p[name] for p in parts]) for name in self.encoder.input_names}
        (logits,) = self.session.run(None, feeds)
        rows = sum(len(b) for b in blocks)
        probs = softmax(logits[:rows])
        if self.positive is not None:
            chosen = np.where(probs[:, self.positive] >= self.threshold, self.positive, 1 - self.positive)
        else:
            chosen = probs.argmax(axis=1)
        answers: list[dict[str, Any]] = [
            {"label": self.labels[c], "score": float(row[c]), "scores": dict(zip(self.labels, row.tolist()))}
            for c, row in zip(chosen.tolist(), probs)
        ]
        if self.alerts:
            for answer, c in zip(answers, chosen.tolist()):
                answer["alert"] = c == self.positive
        if self.anomaly is not None:
            main = {name: feeds[name][:rows] for name in self.encoder.input_names}
            (scores,) = self.anomaly.run(None, main)
            for answer, s in zip(answers, scores.tolist()):
                answer["anomaly_score"] = float(s)
        if explained and sampler is not None:
            self._explain(sampler, logits, rows, blocks, answers, chosen)
        out, start = [], 0
        for b in blocks:
            out.append(answers[start : start + len(b)])
            start += len(b)
        return out

    def _explain(
        self,
        sampler: ShapleySampler,
        logits: np.ndarray,
        rows: int,
        blocks: list[Rows],
        answers: list[dict[str, Any]],
        chosen: np.ndarray,
    ) -> None:
        size, per_row = sampler.size, sampler.rows_per_explanation
        background = logits[rows : rows + size]
        hybrids = logits[rows + size :]
        offsets, start = [], 0
        for b in blocks:
            offsets.append(start)
            start += len(b)
        k = 0
        for b, offset in zip(blocks, offsets):
            if not b.explain:
                continue
            for i in range(len(b)):
                r = offset + i
                label = int(chosen[r]) if self.positive is None else int(self.positive)
                space, f = self.value_function(label)
                base, phi = sampler.contributions(
                    f(logits[r : r + 1])[0], f(background), f(hybrids[k * per_row : (k + 1) * per_row])
                )
                order = np.argsort(-np.abs(phi), kind="stable")
                answers[r]["explanation"] = {
                    "space": space,
                    "label": self.labels[label],
                    "base": base,
                    "value": float(f(logits[r : r + 1])[0]),
                    "contributions": {sampler.features[j].name: float(phi[j]) for j in order},
                }
                k += 1

    def value_function(self, label: int) -> tuple[str, Any]:
        """The explained space: the positive class's log-odds (binary), else the label's probability."""
        if self.positive is not None and len(self.labels) == 2:
            other = 1 - label

            def log_odds(z: np.ndarray) -> np.ndarray:
                return z[:, label].astype(np.float64) - z[:, other].astype(np.float64)

            return "log_odds", log_odds

        def probability(z: np.ndarray) -> np.ndarray:
            return softmax(z.astype(np.float64))[:, label]

        return "probability", probability

    def answer(
        self, request: TabularRequest, block: Rows, outputs: list[list[dict[str, Any]]]
    ) -> dict[str, Any]:
        return {"predictions": outputs[0]}

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        return [
            Sample(json={**({"model": model} if model else {}), "rows": [row]}) for row in sample_rows(count)
        ]

    @classmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> TabularRequest:
        return TabularRequest(model=model, rows=json_rows(inputs), explain=bool(options.get("explain")))

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> list[tuple[str, Any]]:
        import json

        return [(json.dumps(row)[:60], p) for row, p in zip(json_rows(inputs), answer["predictions"])]

    @staticmethod
    def cli_line(given: str, prediction: Any) -> str:
        line = ServingTask.cli_line(given, prediction)
        explanation = prediction.get("explanation")
        if not explanation:
            return line
        top = list(explanation["contributions"].items())[:5]
        shown = ", ".join(f"{name} {value:+.3f}" for name, value in top)
        return (
            f"{line}\n    {explanation['space']} of {explanation['label']!r}: base {explanation['base']:+.3f}"
            f" → {explanation['value']:+.3f}; top: {shown}"
        )


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
