"""Series history → the forecaster's inputs, and its output back to the series' units.
Shared by training and serving (numpy only).

Missing points (null or NaN) in runs of at most `max_gap` are linearly interpolated (the nearest
value at the edges); longer runs are refused.

A forecaster reads the last `context` points of a history (fewer are padded on the left and
marked unobserved), scaled by the recent level and spread (`robust_scale`: a level shift earlier in
the history moves neither), and, for each forecast step, the values at the same phase of the last
`SEASONS` seasons of each of the frequency's two periods (`seasonal_lags`): the seasonal-naive
forecast is one of them, and the network learns what to make of the rest. One model serves every
frequency in `FREQUENCIES`; its quantile outputs are mapped back as `y * scale + loc`.

A forecaster may also read known covariates (`covariate_features`): series such as temperature or a
holiday flag that the client knows for the history and for the steps ahead (observed, or forecast by
someone else). For each step it reads each covariate there, at the positions of the step's seasonal
lags and over the recent level's window, standardised by the recipe series' own mean and spread; a
flag says whether the request gave it. The network's correction from them is learned in units of the
recipe series' typical scale (`reference_scale`), so a window's own scale maps it back.

Models built before frequencies existed read `window` points standardised by the window's mean and
standard deviation (`standardise`) and nothing else; the server still serves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import InputError

MAX_GAP = 3
MAX_HISTORY = 100_000


class SeriesError(InputError):
    """A history the model cannot take; the message names the position."""


@dataclass(frozen=True)
class Frequency:
    """How a forecaster reads series of one sampling frequency."""

    name: str
    periods: tuple[int, int]  # (the seasonal-naive period, a second period); equal where there is one
    min_history: int  # the shortest history served: at least one full season
    horizon: int  # the usual horizon (training weighs the steps up to it)
    reach: int  # the most recent points read (at most the model's context): a decades-long trend
    # or regime far back says little about the next seasons and dwarfs the recent scale


FREQUENCIES: dict[str, Frequency] = {
    f.name: f
    for f in (
        Frequency("hourly", (168, 24), 168, 24, 512),  # same hour last week; and yesterday
        Frequency("daily", (7, 365), 28, 14, 512),
        Frequency("weekly", (52, 52), 60, 13, 260),
        Frequency("monthly", (12, 12), 24, 18, 120),
        Frequency("quarterly", (4, 4), 12, 8, 48),
        Frequency("yearly", (1, 1), 12, 6, 40),  # no season: seasonal-naive is the last value
    )
}
SEASONS = 3  # lags per period: the same phase 1..SEASONS periods back
# per step: (value, observed) per lag and log(period) per period; then, the same for every step, how
# the history itself behaved (`diagnostics`)
DIAGNOSTICS = 2 * 3 + 1
LAG_FEATURES = 2 * SEASONS * 2 + 2 + DIAGNOSTICS
CLIP = 50.0  # scaled values beyond ±CLIP are cut: a spike cannot swamp the network


def robust_scale(values: np.ndarray, frequency: Frequency) -> tuple[float, float]:
    """(loc, scale): the mean of the last short period (at least 8 points) and the standard
    deviation of the last four of them, floored by the whole history's median absolute deviation
    (and, for series that are mostly one value, its mean absolute deviation), so that neither a level
    shift nor a flat stretch earlier in the history moves them much."""
    recent = recent_points(frequency)
    loc = float(values[-recent:].mean())
    spread = float(values[-4 * recent :].std())
    deviation = np.abs(values - np.median(values))
    floor = max(0.15 * float(np.median(deviation)), 0.01 * float(deviation.mean()), 1e-6 * max(1.0, abs(loc)))
    return loc, max(spread, floor)


def seasonal_lags(scaled: np.ndarray, frequency: Frequency, horizon: int) -> np.ndarray:
    """(horizon, LAG_FEATURES): for each step h and each period p, the scaled values at index
    n - j*p + (h mod p) for j = 1..SEASONS with a flag saying whether the history reaches back that
    far, then log(p) per period. Slot (0, j=1) is the seasonal-naive forecast."""
    n = len(scaled)
    steps = np.arange(horizon)
    out = np.empty((horizon, LAG_FEATURES), dtype=np.float32)
    col = 0
    for p in frequency.periods:
        for j in range(1, SEASONS + 1):
            idx = n - j * p + steps % p
            ok = idx >= 0
            out[:, col] = np.where(ok, scaled[np.maximum(idx, 0)], 0.0)
            out[:, col + 1] = ok
            col += 2
    out[:, col : col + 2] = np.log1p(np.asarray(frequency.periods, dtype=np.float32)) / math.log1p(168)
    out[:, col + 2 :] = diagnostics(scaled, frequency)
    return out


def diagnostics(scaled: np.ndarray, frequency: Frequency) -> np.ndarray:
    """(DIAGNOSTICS,): what an exponential-smoothing model selection would look at, measured on the
    history: per period p, the in-sample error of repeating the last season, the error of the mean
    of the last SEASONS seasons, and the autocorrelation at lag p; then the one-step error. They tell
    a stable season (average it) from an evolving one (repeat the last) and from a random walk."""
    out = np.zeros(DIAGNOSTICS, dtype=np.float32)
    n = len(scaled)
    for i, p in enumerate(frequency.periods):
        if n <= p + 1:
            continue
        now = scaled[p:]
        out[3 * i] = np.abs(now - scaled[:-p]).mean()
        total, count = np.zeros(n - p), np.zeros(n - p)
        for j in range(1, SEASONS + 1):
            past = np.arange(p, n) - j * p
            ok = past >= 0
            total[ok] += scaled[past[ok]]
            count[ok] += 1
        out[3 * i + 1] = np.abs(now - total / count).mean()
        a, b = now - now.mean(), scaled[:-p] - scaled[:-p].mean()
        denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
        out[3 * i + 2] = float((a * b).sum()) / denominator if denominator > 0 else 0.0
    if n > 1:
        out[-1] = np.abs(np.diff(scaled)).mean()
    return np.clip(out, -CLIP, CLIP)


def recent_points(frequency: Frequency) -> int:
    """How many of the last points make the recent level (`robust_scale`'s loc)."""
    return max(8, min(frequency.periods))


@dataclass(frozen=True)
class Covariate:
    """A known covariate a forecaster reads, as the manifest's `preprocessing.covariates` lists it."""

    name: str
    mean: float  # of the recipe's series: values are read as (x - mean) / std
    std: float
    description: str = ""


# per covariate and step: the value at the step, at each seasonal lag's position and over the recent
# level's window, and a flag saying the request gave it; then one column for all of them: the recipe
# series' typical scale over this window's (the network's correction is learned in the former)
COVARIATE_LAGS = 2 * SEASONS
COVARIATE_FEATURES = COVARIATE_LAGS + 3


def covariate_width(count: int) -> int:
    """Columns of `covariate_features` for `count` covariates."""
    return count * COVARIATE_FEATURES + 1


def covariate_features(
    rows: list[np.ndarray | None],
    known: list[Covariate],
    frequency: Frequency,
    history: int,
    horizon: int,
    scale: float,
    reference_scale: float,
) -> np.ndarray:
    """(horizon, covariate_width(len(known))): `rows[i]` holds covariate `known[i]` over the last
    `history` points of a history and at least one step ahead (None: not given; steps beyond those
    given repeat the last), aligned at the history's end as `seasonal_lags` reads it."""
    out = np.zeros((horizon, covariate_width(len(known))), dtype=np.float32)
    steps = np.arange(horizon)
    recent = recent_points(frequency)
    for i, (row, spec) in enumerate(zip(rows, known)):
        if row is None:
            continue
        z = np.clip((np.asarray(row, dtype=np.float64) - spec.mean) / spec.std, -CLIP, CLIP)
        past = z[:history]
        ahead = z[history:] if len(z) > history else past[-1:]
        col = i * COVARIATE_FEATURES
        out[:, col] = ahead[np.minimum(steps, len(ahead) - 1)]
        for j, (p, season) in enumerate((p, s) for p in frequency.periods for s in range(1, SEASONS + 1)):
            idx = history - season * p + steps % p
            out[:, col + 1 + j] = np.where(idx >= 0, past[np.clip(idx, 0, history - 1)], 0.0)
        out[:, col + 1 + COVARIATE_LAGS] = past[-recent:].mean()
        out[:, col + 2 + COVARIATE_LAGS] = 1.0
    out[:, -1] = np.clip(reference_scale / scale, 1e-2, 1e2)
    return out


def series_features(
    values: np.ndarray, frequency: Frequency, context: int, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(history (context,), observed (context,), lags (horizon, LAG_FEATURES), loc, scale) for one
    clean history of at least `frequency.min_history` points (its last `frequency.reach` are read)."""
    values = values[-min(context, frequency.reach) :]
    loc, scale = robust_scale(values, frequency)
    scaled = np.clip((values - loc) / scale, -CLIP, CLIP).astype(np.float32)
    history = np.zeros(context, dtype=np.float32)
    observed = np.zeros(context, dtype=np.float32)
    history[context - len(scaled) :] = scaled
    observed[context - len(scaled) :] = 1.0
    return history, observed, seasonal_lags(scaled, frequency, horizon), loc, scale


def manifest_frequencies() -> dict[str, dict[str, Any]]:
    """`FREQUENCIES` as a manifest's `preprocessing.frequencies` records them."""
    return {
        f.name: {
            "periods": list(f.periods),
            "min_history": f.min_history,
            "horizon": f.horizon,
            "reach": f.reach,
        }
        for f in FREQUENCIES.values()
    }


def not_served(name: str, served: Any) -> SeriesError:
    return SeriesError(f"frequency: {name!r} is not served by this model; it serves {', '.join(served)}")


def frequency_named(name: str | None, default: str, served: dict[str, Any]) -> Frequency:
    """The `Frequency` a request asks for, as the model's manifest describes it (`served`: name →
    periods, min_history, horizon, reach; what a manifest leaves out is this module's default); a
    name the model does not serve is an input error."""
    key = default if name is None else name
    known, spec = FREQUENCIES.get(key), served.get(key)
    if spec is None or (known is None and not {"periods", "min_history", "horizon", "reach"} <= set(spec)):
        raise not_served(key, served)
    if known is None:
        known = Frequency(key, (1, 1), 1, 1, 1)  # every field comes from the manifest
    periods = spec.get("periods", known.periods)
    return Frequency(
        key,
        (int(periods[0]), int(periods[1])),
        int(spec.get("min_history", known.min_history)),
        int(spec.get("horizon", known.horizon)),
        int(spec.get("reach", known.reach)),
    )


def clean_history(
    history: Any,
    window: int,
    max_gap: int = MAX_GAP,
    minimum: int | None = None,
    series: str = "",
    field: str = "history",
) -> tuple[np.ndarray, int]:
    """The last `window` points (or all, when fewer but at least `minimum`) as float64, gaps
    interpolated; returns (values, points interpolated). `series` names the frequency in errors,
    `field` the request's field."""
    if not isinstance(history, list):
        raise SeriesError(f"{field}: expected an array of numbers, got {type(history).__name__}")
    need = window if minimum is None else minimum
    if len(history) < need:
        raise SeriesError(
            f"{field}: {len(history)} points; the model needs at least {need}{f' for {series} series' if series else ''}"
        )
    if len(history) > MAX_HISTORY:
        raise SeriesError(f"{field}: {len(history)} points; at most {MAX_HISTORY}")
    bad = next((i for i, v in enumerate(history) if v is not None and type(v) not in (int, float)), None)
    if bad is not None:  # only the last `window` points are used, but a non-number anywhere is a mistake
        v = history[bad]
        raise SeriesError(
            f"{field}[{bad}]: expected a number or null, got {type(v).__name__} {str(v)[:30]!r}"
        )
    window = min(window, len(history))
    offset = len(history) - window
    values = np.empty(window, dtype=np.float64)
    missing = np.zeros(window, dtype=bool)
    for i, v in enumerate(history[offset:]):
        if type(v) is int:
            if abs(v) > 1e30:
                raise SeriesError(f"{field}[{offset + i}]: integer out of range (|x| ≤ 1e30)")
            values[i] = v
        elif type(v) is float:
            if math.isnan(v):
                missing[i] = True
            elif math.isinf(v) or abs(v) > 1e30:
                raise SeriesError(f"{field}[{offset + i}]: {v} is not a usable number")
            else:
                values[i] = v
        else:  # None
            missing[i] = True
    count = int(missing.sum())
    if count == window:
        raise SeriesError(f"{field}: the last {window} points are all missing")
    for start, end in missing_runs(missing):
        if end - start > max_gap:
            raise SeriesError(
                f"{field}[{offset + start}..{offset + end - 1}]: {end - start} missing points in a row; at most {max_gap} are interpolated"
            )
    interpolate(values, missing)
    return values, count


def missing_runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a boolean mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def interpolate(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """In place: missing points linearly interpolated between their neighbours (nearest at the edges)."""
    if missing.any():
        present = np.flatnonzero(~missing)
        values[missing] = np.interp(np.flatnonzero(missing), present, values[present])
    return values


def standardise(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows - loc) / scale as float32, loc and scale being each window's mean and standard
    deviation (last axis; kept as (..., 1) so outputs map back as `y * scale + loc`)."""
    loc = windows.mean(axis=-1, keepdims=True)
    scale = np.maximum(windows.std(axis=-1, keepdims=True), 1e-6 * np.maximum(1.0, np.abs(loc)))
    return ((windows - loc) / scale).astype(np.float32), loc, scale


# The served forecast combines the network's with seasonal-naive's, weighted by how each did on the
# series' own most recent stretches: the network forecasts from the history before each of the last
# COMBINE_WINDOWS horizons and is scored against what followed. The weights go as the inverse of each
# one's error to the power COMBINE_POWER (Bates and Granger's inverse squared error, sharpened: a
# network twice as accurate there keeps 94% of the weight, so a fine-tuned model that is better on
# its own series is left nearly alone, while on a series where repeating the last season works the
# forecast leans that way). Chosen by benchmarks/forecast_zero_shot.py and the energy-demand backtest.
COMBINE_WINDOWS = 4
COMBINE_POWER = 4


def validation_origins(
    n: int, frequency: Frequency, horizon: int, windows: int = COMBINE_WINDOWS
) -> list[int]:
    """The origins, `horizon` apart and the last `horizon` before the end of a history of `n`
    points, whose history before them is at least the frequency's minimum and one season."""
    least = max(frequency.min_history, frequency.periods[0])  # seasonal-naive needs a season before it
    return [o for o in (n - k * horizon for k in range(1, windows + 1)) if o >= least]


def repeat_season(values: np.ndarray, period: int, horizon: int) -> np.ndarray:
    """(horizon,): the last `period` values repeated (at least one season of `values`)."""
    return values[len(values) - period + np.arange(horizon) % period]


def seasonal_naive(values: np.ndarray, period: int, horizon: int, levels: np.ndarray) -> np.ndarray:
    """(horizon, len(levels)): the last season repeated as the median, and for the other quantile
    levels the same quantiles of its in-sample errors added to it (on their side of the median: a
    trending series' errors may all have one sign)."""
    point = repeat_season(values, period, horizon)
    errors = values[period:] - values[:-period]
    offsets = np.quantile(errors, levels) if len(errors) else np.zeros(len(levels))
    offsets = np.where(levels < 0.5, np.minimum(offsets, 0.0), np.maximum(offsets, 0.0))
    offsets = np.where(np.isclose(levels, 0.5), 0.0, offsets)
    return point[:, None] + offsets[None, :]


def combination_weight(
    values: np.ndarray, origins: list[int], medians: list[np.ndarray], frequency: Frequency, horizon: int
) -> float:
    """The network's weight in the served forecast: e_naive^k / (e_net^k + e_naive^k) with k =
    COMBINE_POWER, e being each one's mean absolute error over the `horizon` steps after each origin
    (`medians[k]`: the network's p50 from the history before `origins[k]`, in the series' units);
    1 without origins."""
    if not origins:
        return 1.0
    period = frequency.periods[0]
    net = np.mean([np.abs(m[:horizon] - values[o : o + horizon]).mean() for o, m in zip(origins, medians)])
    naive = np.mean(
        [np.abs(repeat_season(values[:o], period, horizon) - values[o : o + horizon]).mean() for o in origins]
    )
    total = net**COMBINE_POWER + naive**COMBINE_POWER
    return float(naive**COMBINE_POWER / total) if total > 0 else 1.0


def combine(
    quantiles: np.ndarray, values: np.ndarray, frequency: Frequency, weight: float, levels: np.ndarray
) -> np.ndarray:
    """The served (horizon, quantiles): `weight` of the network's, the rest seasonal-naive's, level
    by level."""
    if weight >= 1.0 or len(values) < frequency.periods[0]:  # no season to repeat
        return quantiles
    naive = seasonal_naive(values, frequency.periods[0], len(quantiles), levels)
    return weight * quantiles + (1.0 - weight) * naive
