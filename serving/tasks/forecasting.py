"""Quantile forecasts (`/forecast`): the history is validated (gaps, types, length) and its last
window standardised; windows of several requests run together; the quantiles are mapped back to
the series' units and cut to the requested horizon."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, StrictInt

from serving.errors import InputError
from serving.manifest import Manifest
from serving.processing.series import clean_history, standardise
from serving.settings import Settings
from serving.tasks.base import Answer, Option, Sample, ServingTask, TaskRequest


class ForecastRequest(TaskRequest):
    history: list[Any] = Field(
        min_length=1,
        description="numbers or null (gaps), oldest first; at least the model's window",
        json_schema_extra={"tensor": "FP32"},
    )  # on v2: an FP32 tensor, NaN for a gap
    horizon: StrictInt | None = Field(None, description="steps ahead; default: the model's maximum")


class ForecastAnswer(Answer):
    horizon: int
    forecast: list[float] = Field(description="the median (p50)")
    quantiles: dict[str, list[float]]
    interpolated: int = Field(description="gaps in the history filled by interpolation")


@dataclass
class SeriesInput:
    window: np.ndarray  # (window,) float32, standardised
    loc: float
    scale: float
    horizon: int
    interpolated: int


class Forecasting(ServingTask[SeriesInput, np.ndarray, np.ndarray]):
    name = "forecasting"
    route = "/forecast"
    client_method = "forecast"
    summary = "Forecast a series (e.g. hourly energy demand) with p10/p50/p90 quantiles"
    default_model = "energy-demand"
    request_model = ForecastRequest
    response_model = ForecastAnswer
    options: ClassVar[dict[str, Option]] = {
        "horizon": Option(
            int, "steps ahead (default: the model's maximum)", {"type": "integer", "minimum": 1}
        )
    }
    load_samples = 50

    def __init__(self, model_dir: Path, manifest: Manifest, session: Any, settings: Settings) -> None:
        super().__init__(model_dir, manifest, session, settings)
        p = manifest.preprocessing
        self.window, self.max_horizon, self.max_gap = (
            int(p["window"]),
            int(p["horizon"]),
            int(p.get("max_gap", 3)),
        )
        self.quantile_names = list(manifest.labels)
        self.input_name = session.get_inputs()[0].name

    def prepare(self, request: ForecastRequest) -> SeriesInput:
        horizon = self.max_horizon if request.horizon is None else request.horizon
        if not 1 <= horizon <= self.max_horizon:
            raise InputError(
                f"horizon: {horizon} is out of range; the model forecasts 1..{self.max_horizon} steps"
            )
        values, interpolated = clean_history(request.history, self.window, self.max_gap)
        window, loc, scale = standardise(values)
        return SeriesInput(window, float(loc[0]), float(scale[0]), horizon, interpolated)

    def items(self, prepared: SeriesInput) -> list[np.ndarray]:
        return [prepared.window]

    def run(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        (out,) = self.session.run(None, {self.input_name: np.stack(windows)})
        return list(out)

    def answer(
        self, request: ForecastRequest, prepared: SeriesInput, outputs: list[np.ndarray]
    ) -> dict[str, Any]:
        values = outputs[0][: prepared.horizon].astype(np.float64) * prepared.scale + prepared.loc
        quantiles = {name: values[:, i].tolist() for i, name in enumerate(self.quantile_names)}
        median = quantiles.get("p50", values[:, len(self.quantile_names) // 2].tolist())
        return {
            "horizon": prepared.horizon,
            "forecast": median,
            "quantiles": quantiles,
            "interpolated": prepared.interpolated,
        }

    @classmethod
    def samples(cls, count: int, model: str | None = None) -> list[Sample]:
        return [
            Sample(json={**({"model": model} if model else {}), "history": h, "horizon": 24})
            for h in sample_histories(count)
        ]

    @classmethod
    def cli_request(cls, inputs: list[str], options: dict[str, Any], model: str) -> ForecastRequest:
        return ForecastRequest(model=model, history=read_history(inputs), horizon=options.get("horizon"))

    @classmethod
    def cli_rows(cls, inputs: list[str], answer: dict[str, Any]) -> None:
        return None


def sample_histories(count: int, length: int = 336) -> list[list[float]]:
    """Two weeks of hourly load with daily and weekly cycles, one per phase shift."""
    rng = np.random.default_rng(0)
    hours = np.arange(length)
    return [
        np.round(
            500
            + 120 * np.sin(2 * np.pi * (hours + s) / 24)
            + 40 * np.sin(2 * np.pi * hours / 168)
            + rng.normal(0, 10, length),
            2,
        ).tolist()
        for s in range(count)
    ]


def read_history(inputs: list[str]) -> list[Any]:
    """A series from a JSON file (an array, or an object with "history"), a CSV file (its `value` or
    last column, in file order; empty cells are gaps), or numbers on the command line."""
    if len(inputs) > 1 or not Path(inputs[0]).is_file():
        return [None if v.lower() in ("nan", "null", "") else float(v) for v in inputs]
    text = Path(inputs[0]).read_text(encoding="utf-8")
    if inputs[0].endswith(".csv"):
        import csv

        reader = csv.reader(text.splitlines())
        header = next(reader)
        col = header.index("value") if "value" in header else len(header) - 1
        return [float(row[col]) if row[col].strip() else None for row in reader if row]
    value = json.loads(text)
    return value["history"] if isinstance(value, dict) else value
