"""Quantile forecasts (`/forecast`): the history is validated (gaps, types, length against the
frequency's minimum), scaled, and read the way the model was trained (serving/processing/series.py
`series_features`); windows of several requests run together; the quantiles are mapped back to the
series' units and cut to the requested horizon.

A model's manifest lists the frequencies it serves (`preprocessing.frequencies`: seasonal periods,
the minimum history and the usual horizon of each); a request may name one (`frequency`), else the
model's own. A model that learned known covariates (`preprocessing.covariates`, e.g. temperature and
a holiday flag) reads them from `covariates`, each covering the history and the steps ahead; without
them it forecasts from the history alone. Models built before frequencies existed read one
standardised window of a fixed length and serve their own frequency only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, StrictInt, StrictStr

from serving.errors import InputError
from serving.manifest import Manifest
from serving.processing.series import (
    COMBINE_WINDOWS,
    Covariate,
    Frequency,
    SeriesError,
    clean_history,
    combination_weight,
    combine,
    covariate_features,
    frequency_named,
    not_served,
    series_features,
    standardise,
    validation_origins,
)
from serving.settings import Settings
from serving.tasks.base import Answer, Option, Sample, ServingTask, TaskRequest


class ForecastRequest(TaskRequest):
    history: list[Any] = Field(
        min_length=1,
        description="numbers or null (gaps), oldest first; at least the model's window",
        json_schema_extra={"tensor": "FP32"},
    )  # on v2: an FP32 tensor, NaN for a gap
    horizon: StrictInt | None = Field(None, description="steps ahead; default: the frequency's usual horizon")
    frequency: StrictStr | None = Field(
        None,
        description="hourly, daily, weekly, monthly, quarterly or yearly (those the model's manifest lists); default: the model's own",
    )
    # v1 only: a v2 request's parameters are scalars
    covariates: dict[str, list[Any]] | None = Field(
        None,
        description="known covariates the model lists (name → numbers or null), each one value per history point, "
        "then one per step ahead",
        json_schema_extra={"tensor": False},
    )


class ForecastAnswer(Answer):
    horizon: int
    frequency: str
    forecast: list[float] = Field(description="the median (p50)")
    quantiles: dict[str, list[float]]
    interpolated: int = Field(description="gaps in the history filled by interpolation")


@dataclass
class SeriesInput:
    feeds: tuple[np.ndarray, ...]  # one row of each model input, in the model's input order
    loc: float
    scale: float
    horizon: int
    interpolated: int
    frequency: str
    # what the combination with seasonal-naive needs (serving/processing/series.py `combine`);
    # None for fixed-window models
    values: np.ndarray | None = None
    origins: tuple[int, ...] = ()  # validation origins in `values`, each one row after `feeds`
    checks: tuple[tuple[tuple[np.ndarray, ...], float, float], ...] = ()  # (feeds, loc, scale)


class Forecasting(ServingTask[SeriesInput, tuple[np.ndarray, ...], np.ndarray]):
    name = "forecasting"
    route = "/forecast"
    client_method = "forecast"
    summary = "Forecast a series (e.g. hourly energy demand) with p10/p50/p90 quantiles"
    default_model = "energy-demand"
    request_model = ForecastRequest
    response_model = ForecastAnswer
    options: ClassVar[dict[str, Option]] = {
        "horizon": Option(
            int, "steps ahead (default: the frequency's usual horizon)", {"type": "integer", "minimum": 1}
        ),
        "frequency": Option(str, "the series' frequency (default: the model's own)", {"type": "string"}),
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
        self.frequency = str(p.get("frequency", "hourly"))
        # as the manifest describes them, resolved once; absent: a fixed-window model of one frequency
        listed: dict[str, Any] = dict(p.get("frequencies") or {})
        self.frequencies: dict[str, Frequency] = {
            name: frequency_named(name, self.frequency, listed) for name in listed
        }
        self.quantile_names = list(manifest.labels)
        self.levels = np.asarray(p.get("quantiles") or [int(q[1:]) / 100 for q in self.quantile_names], float)
        # absent from models built before it: they get the server's default
        self.combine_windows = int(p.get("combine_windows", COMBINE_WINDOWS))
        self.median = int(np.argmin(np.abs(self.levels - 0.5)))
        self.input_names = [i.name for i in session.get_inputs()]
        self.covariates = [
            Covariate(str(c["name"]), float(c["mean"]), float(c["std"]), str(c.get("description", "")))
            for c in p.get("covariates") or []
        ]
        self.reference_scale = float(p.get("reference_scale", 1.0))

    def describe(self) -> dict[str, Any]:
        """What `/v1/models` says besides the manifest: the frequencies served and their minimum
        history, and the covariates the model reads."""
        if not self.frequencies:
            return {
                "frequencies": {self.frequency: {"min_history": self.window, "horizon": self.max_horizon}}
            }
        return {
            "frequencies": {
                f.name: {"min_history": f.min_history, "horizon": min(f.horizon, self.max_horizon)}
                for f in self.frequencies.values()
            },
            **(
                {
                    "covariates": {
                        c.name: {"description": c.description, "frequency": self.frequency}
                        for c in self.covariates
                    }
                }
                if self.covariates
                else {}
            ),
        }

    def prepare(self, request: ForecastRequest) -> SeriesInput:
        if not self.frequencies:
            return self._prepare_fixed(request)
        key = self.frequency if request.frequency is None else request.frequency
        frequency = self.frequencies.get(key)
        if frequency is None:
            raise not_served(key, self.frequencies)
        usual = min(frequency.horizon, self.max_horizon)
        horizon = self._horizon(request.horizon, usual)
        # the window read, and before it room for the validation windows of the combination; a
        # history that cannot be read that far back (a long gap there) is read as far as the window
        try:
            values, interpolated = clean_history(
                request.history,
                self.window + self.combine_windows * usual,
                self.max_gap,
                minimum=frequency.min_history,
                series=frequency.name,
            )
        except SeriesError:
            values, interpolated = clean_history(
                request.history,
                self.window,
                self.max_gap,
                minimum=frequency.min_history,
                series=frequency.name,
            )
        rows = self._covariates(request, frequency, horizon, len(values))
        feeds, loc, scale = self._features(values, frequency, rows)
        origins = validation_origins(len(values), frequency, usual, self.combine_windows)
        return SeriesInput(
            feeds,
            loc,
            scale,
            horizon,
            interpolated,
            frequency.name,
            values=values,
            origins=tuple(origins),
            checks=tuple(
                self._features(values[:o], frequency, tuple(r if r is None else r[: o + usual] for r in rows))
                for o in origins
            ),
        )

    def _covariates(
        self, request: ForecastRequest, frequency: Frequency, horizon: int, read: int
    ) -> tuple[np.ndarray | None, ...]:
        """Each covariate the model lists over the last `read` history points and the `horizon`
        steps ahead (gaps interpolated as the history's), None where the request leaves it out."""
        given = request.covariates or {}
        if not given:
            return (None,) * len(self.covariates)
        names = [c.name for c in self.covariates]
        if not names:
            raise InputError("covariates: this model reads none; leave the field out")
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InputError(f"covariates: unknown {unknown}; this model reads {names}")
        if frequency.name != self.frequency:
            raise InputError(
                f"covariates: learned on {self.frequency} series; a {frequency.name} forecast reads the history alone"
            )
        expected = len(request.history) + horizon
        rows: list[np.ndarray | None] = []
        for name in names:
            raw = given.get(name)
            if raw is None:
                rows.append(None)
                continue
            if isinstance(raw, list) and len(raw) != expected:
                raise InputError(
                    f"covariates.{name}: {len(raw)} values; expected {expected} (one per history point, "
                    f"{len(request.history)}, then one per step ahead, {horizon})"
                )
            values, _ = clean_history(raw, expected, self.max_gap, field=f"covariates.{name}")
            rows.append(values[len(values) - read - horizon :])
        return tuple(rows)

    def _features(
        self, values: np.ndarray, frequency: Frequency, rows: tuple[np.ndarray | None, ...] = ()
    ) -> tuple[tuple[np.ndarray, ...], float, float]:
        history, observed, lags, loc, scale = series_features(
            values, frequency, self.window, self.max_horizon
        )
        feeds = {"history": history, "observed": observed, "lags": lags}
        if "covariates" in self.input_names:
            feeds["covariates"] = covariate_features(
                list(rows) or [None] * len(self.covariates),
                self.covariates,
                frequency,
                len(values),
                self.max_horizon,
                scale,
                self.reference_scale,
            )
        return tuple(feeds[name] for name in self.input_names), loc, scale

    def _horizon(self, asked: int | None, default: int) -> int:
        horizon = default if asked is None else asked
        if not 1 <= horizon <= self.max_horizon:
            raise InputError(
                f"horizon: {horizon} is out of range; the model forecasts 1..{self.max_horizon} steps"
            )
        return horizon

    def _prepare_fixed(self, request: ForecastRequest) -> SeriesInput:
        if request.frequency is not None and request.frequency != self.frequency:
            raise InputError(
                f"frequency: {request.frequency!r} is not served by this model; it serves {self.frequency}"
            )
        horizon = self._horizon(request.horizon, self.max_horizon)
        if request.covariates:
            raise InputError("covariates: this model reads none; leave the field out")
        values, interpolated = clean_history(request.history, self.window, self.max_gap)
        window, loc, scale = standardise(values)
        return SeriesInput((window,), float(loc[0]), float(scale[0]), horizon, interpolated, self.frequency)

    def items(self, prepared: SeriesInput) -> list[tuple[np.ndarray, ...]]:
        return [prepared.feeds, *(feeds for feeds, _, _ in prepared.checks)]

    def run(self, items: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        feeds = {name: np.stack([item[i] for item in items]) for i, name in enumerate(self.input_names)}
        (out,) = self.session.run(None, feeds)
        return list(out)

    def answer(
        self, request: ForecastRequest, prepared: SeriesInput, outputs: list[np.ndarray]
    ) -> dict[str, Any]:
        values = outputs[0][: prepared.horizon].astype(np.float64) * prepared.scale + prepared.loc
        if prepared.values is not None:
            frequency = self.frequencies[prepared.frequency]
            medians = [
                out[:, self.median].astype(np.float64) * s + loc
                for out, (_, loc, s) in zip(outputs[1:], prepared.checks)
            ]
            usual = min(frequency.horizon, self.max_horizon)
            weight = combination_weight(prepared.values, list(prepared.origins), medians, frequency, usual)
            values = combine(values, prepared.values, frequency, weight, self.levels)
        quantiles = {name: values[:, i].tolist() for i, name in enumerate(self.quantile_names)}
        median = quantiles.get("p50", values[:, len(self.quantile_names) // 2].tolist())
        return {
            "horizon": prepared.horizon,
            "frequency": prepared.frequency,
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
        return ForecastRequest(
            model=model,
            history=read_history(inputs),
            horizon=options.get("horizon"),
            frequency=options.get("frequency"),
        )

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
