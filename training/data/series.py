"""Hourly series for forecasting: a synthetic pretraining corpus, a synthetic city load, and CSV files.

- `synthetic_corpus`: many varied series for pretraining a global forecaster — daily and weekly
  seasonality of random shapes, trend, level shifts, holidays, autocorrelated noise, random scale.
- `city_load`: the fine-tuning target, an hourly electricity load whose seasonality is driven by
  temperature (heating below 15 °C, cooling above 22 °C), with weekday/weekend profiles, public
  holidays, weather fronts lasting days, growth and noise. Written as CSV (timestamp, load_mw,
  temperature_c) under runs/data/ by `resolve_series`.
- Users' data: a CSV with a timestamp column and a value column (`read_series_csv`).
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

from serving.processing.series import MAX_GAP, interpolate, missing_runs
from training.data.images import data_cache
from training.data.tables import write_csv


def _daily_profile(rng: np.random.Generator, hours: np.ndarray, harmonics: int = 3) -> np.ndarray:
    out = np.zeros_like(hours, dtype=np.float64)
    for k in range(1, harmonics + 1):
        out += rng.normal(0, 1 / k) * np.sin(2 * np.pi * k * hours / 24 + rng.uniform(0, 2 * np.pi))
    return out


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    noise = rng.normal(0, sigma, n)
    out = np.empty(n)
    out[0] = noise[0] / np.sqrt(max(1e-6, 1 - phi**2))
    for t in range(1, n):
        out[t] = phi * out[t - 1] + noise[t]
    return out


def synthetic_series(rng: np.random.Generator, length: int) -> np.ndarray:
    """One varied hourly series (positive, arbitrary scale)."""
    t = np.arange(length)
    hour = (t + rng.integers(24)) % 24
    day = (t // 24 + rng.integers(7)) % 7
    daily = _daily_profile(rng, hour, harmonics=int(rng.integers(1, 4))) * rng.uniform(0.05, 0.35)
    weekend = (day >= 5) * rng.uniform(-0.3, 0.1)
    weekend_shape = (day >= 5) * _daily_profile(rng, hour, 2) * rng.uniform(0, 0.15)
    trend = rng.normal(0, 0.15) * t / max(length, 1)
    shifts = np.zeros(length)
    for _ in range(rng.poisson(0.7)):
        shifts[rng.integers(length) :] += rng.normal(0, 0.15)
    holidays = np.zeros(length)
    for _ in range(rng.poisson(length / 24 / 60)):
        start = rng.integers(0, max(1, length // 24)) * 24
        holidays[start : start + 24] = rng.uniform(-0.3, -0.05)
    slow = _ar1(rng, length, rng.uniform(0.9, 0.995), rng.uniform(0.005, 0.03))
    fast = rng.normal(0, rng.uniform(0.005, 0.05), length)
    level = 1 + trend + shifts + slow
    shape = 1 + daily + weekend + weekend_shape + holidays
    series = level * shape + fast
    return np.maximum(series, 0.01) * rng.lognormal(3, 2)


def synthetic_corpus(count: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic_series(rng, length) for _ in range(count)]


def _holidays(years: range) -> set[dt.date]:
    days = set()
    for y in years:
        days |= {
            dt.date(y, 1, 1),
            dt.date(y, 5, 1),
            dt.date(y, 7, 4),
            dt.date(y, 12, 25),
            dt.date(y, 12, 26),
            dt.date(y, 12, 31),
        }
        # last Monday of May, first Monday of September, fourth Thursday of November
        may = max(dt.date(y, 5, d) for d in range(25, 32) if dt.date(y, 5, d).weekday() == 0)
        sep = min(dt.date(y, 9, d) for d in range(1, 8) if dt.date(y, 9, d).weekday() == 0)
        nov = [dt.date(y, 11, d) for d in range(1, 31) if dt.date(y, 11, d).weekday() == 3][3]
        days |= {may, sep, nov}
    return days


def city_load(
    start: dt.datetime = dt.datetime(2023, 1, 1), hours: int = 3 * 365 * 24, seed: int = 21
) -> dict[str, list]:
    """Hourly load (MW) of a synthetic city of ~1 GW and its temperature (°C)."""
    rng = np.random.default_rng(seed)
    stamps = [start + dt.timedelta(hours=h) for h in range(hours)]
    t = np.arange(hours)
    doy = np.array([s.timetuple().tm_yday for s in stamps])
    hour = np.array([s.hour for s in stamps])
    holidays = _holidays(range(start.year, stamps[-1].year + 1))
    off = np.array([s.weekday() >= 5 or s.date() in holidays for s in stamps])
    fronts = np.repeat(_ar1(rng, hours // 24 + 1, 0.75, 2.8), 24)[:hours]  # weather lasting days
    temperature = (
        13
        - 11 * np.cos(2 * np.pi * (doy - 20) / 365.25)
        + 4.5 * np.sin(2 * np.pi * (hour - 9) / 24)
        + fronts
        + rng.normal(0, 0.6, hours)
    )
    work = (
        0.82
        + 0.2 * np.exp(-(((hour - 11) / 3.5) ** 2))
        + 0.17 * np.exp(-(((hour - 19) / 2.2) ** 2))
        - 0.12 * np.exp(-(((hour - 3.5) / 2.5) ** 2))
    )
    rest = (
        0.78
        + 0.08 * np.exp(-(((hour - 13) / 4) ** 2))
        + 0.16 * np.exp(-(((hour - 19.5) / 2.5) ** 2))
        - 0.1 * np.exp(-(((hour - 4.5) / 2.5) ** 2))
    )
    profile = np.where(off, rest, work)
    heating = np.maximum(0, 15 - temperature) * 14
    cooling = np.maximum(0, temperature - 22) ** 1.3 * 22
    growth = 1 + 0.015 * t / (365 * 24)
    noise = 1 + _ar1(rng, hours, 0.9, 0.006)
    load = (
        (900 * profile + heating * (0.6 + 0.4 * profile) + cooling * (0.5 + 0.5 * profile)) * growth * noise
    )
    return {
        "timestamp": [s.isoformat() for s in stamps],
        "load_mw": load.round(1).tolist(),
        "temperature_c": temperature.round(2).tolist(),
    }


def resolve_series(source: str, seed: int) -> tuple[Path, str]:
    """(CSV path, value column) for a series source; `generated:city-load` is written once."""
    if source == "generated:city-load":
        path = data_cache() / f"city-load-seed{seed}.csv"
        return (path if path.is_file() else write_csv(path, city_load(seed=seed))), "load_mw"
    if source.startswith(("generated:", "builtin:")):
        raise ValueError(f"unknown series source {source!r}; known: generated:city-load, or a CSV path")
    return Path(source).expanduser(), "value"


def read_series_csv(path: Path, value_column: str = "value", time_column: str = "timestamp") -> np.ndarray:
    """A CSV of (timestamp, value) rows → an hourly float64 series in time order. Missing hours and
    empty cells become gaps; gaps of at most MAX_GAP hours are interpolated, longer ones refused."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if value_column not in header and "value" in header:
            value_column = "value"
        missing = {time_column, value_column} - set(header)
        if missing:
            raise ValueError(f"{path}: CSV header lacks column(s) {sorted(missing)} (has {header})")
        points: dict[dt.datetime, float] = {}
        for n, row in enumerate(reader, 2):
            try:
                stamp = dt.datetime.fromisoformat(row[time_column].strip())
            except ValueError:
                raise ValueError(
                    f"{path}:{n}: {time_column} {row[time_column]!r} is not an ISO 8601 timestamp"
                ) from None
            cell = (row[value_column] or "").strip()
            try:
                points[stamp.replace(minute=0, second=0, microsecond=0)] = float(cell) if cell else np.nan
            except ValueError:
                raise ValueError(f"{path}:{n}: {value_column} {cell!r} is not a number") from None
    if len(points) < 2:
        raise ValueError(f"{path}: fewer than two rows")
    first, last = min(points), max(points)
    hours = int((last - first).total_seconds() // 3600) + 1
    series = np.array([points.get(first + dt.timedelta(hours=h), np.nan) for h in range(hours)])
    gaps = np.isnan(series)
    longest = max((end - start for start, end in missing_runs(gaps)), default=0)
    if longest > MAX_GAP:
        raise ValueError(
            f"{path}: a gap of {longest} hours; at most {MAX_GAP} are interpolated (fill or cut the series)"
        )
    interpolate(series, gaps)
    return series
