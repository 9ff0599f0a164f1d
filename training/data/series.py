"""Series for forecasting: generator families for pretraining and for held-out evaluation, a
synthetic city load, and CSV files.

- `corpus`: many varied series of every frequency in serving/processing/series.py FREQUENCIES for
  pretraining a global forecaster, drawn from `PRETRAIN_FAMILIES`: seasonal composites (several
  periods of random shape, additive or multiplicative, trend with changepoints, level shifts,
  holidays, outliers, autocorrelated noise), random walks with seasonality, intermittent counts and
  saturating growth, exponential smoothing's state space. `HELDOUT_FAMILIES` are generators never used in pretraining (on/off schedules,
  stochastic seasonality, exponential growth with multiplicative seasonality, drifting seasonal
  amplitude and phase); benchmarks/forecast_zero_shot.py scores the forecaster on them.
- `synthetic_corpus`: hourly series only (the corpus of the first forecasters).
- `city_load`: the fine-tuning target, an hourly electricity load whose seasonality is driven by
  temperature (heating below 15 °C, cooling above 22 °C), with weekday/weekend profiles, public
  holidays, weather fronts lasting days, growth and noise. Written as CSV (timestamp, load_mw,
  temperature_c, holiday) under runs/data/ by `resolve_series`.
- Users' data: a CSV with a timestamp column and a value column, hourly to yearly (`read_series_csv`),
  and columns of known covariates beside it (`read_series_table`).
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
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


# --- generator families, every frequency -------------------------------------------------------

# points per generated series, by frequency: (fewest, most)
LENGTHS = {
    "hourly": (1200, 3000),
    "daily": (300, 1500),
    "weekly": (120, 520),
    "monthly": (48, 360),
    "quarterly": (28, 160),
    "yearly": (24, 150),
}
# the seasonal periods a generator draws from, per frequency (fractional: the year in days/weeks)
SEASONALITIES = {
    "hourly": (24.0, 168.0),
    "daily": (7.0, 365.25),
    "weekly": (52.18,),
    "monthly": (12.0,),
    "quarterly": (4.0,),
    "yearly": (),
}


def _shape(rng: np.random.Generator, t: np.ndarray, period: float, harmonics: int) -> np.ndarray:
    """A random periodic shape of unit-ish amplitude."""
    out = np.zeros(len(t))
    for k in range(1, harmonics + 1):
        out += rng.normal(0, 1 / k) * np.sin(2 * np.pi * k * t / period + rng.uniform(0, 2 * np.pi))
    return out / max(1e-6, np.abs(out).max())


def _seasonal(rng: np.random.Generator, t: np.ndarray, frequency: str) -> np.ndarray:
    out = np.zeros(len(t))
    for period in SEASONALITIES[frequency]:
        if period <= len(t) / 1.5 and rng.random() < 0.85:
            out += rng.uniform(0.05, 0.6) * _shape(rng, t, period, int(rng.integers(1, 5)))
    if frequency == "yearly" and rng.random() < 0.5:  # business or sunspot-like cycles
        out += rng.uniform(0.1, 0.6) * _shape(rng, t, rng.uniform(5, 12), int(rng.integers(1, 3)))
    return out


def _trend(rng: np.random.Generator, n: int) -> np.ndarray:
    """Piecewise-linear, with a few changepoints, sometimes damped."""
    slope = np.full(n, rng.normal(0, 0.6) / n)
    for _ in range(rng.poisson(1.0)):
        slope[rng.integers(n) :] += rng.normal(0, 0.6) / n
    trend = np.cumsum(slope) * (rng.random() < 0.8)
    return trend * (1 - np.exp(-np.arange(n) / (n * rng.uniform(0.2, 2)))) if rng.random() < 0.2 else trend


def _shifts(rng: np.random.Generator, n: int, rate: float = 0.8) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(rng.poisson(rate)):
        out[rng.integers(n) :] += rng.normal(0, 0.25)
    return out


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return _ar1(rng, n, rng.uniform(0, 0.95), rng.uniform(0.005, 0.1)) + rng.normal(
        0, rng.uniform(0, 0.15), n
    )


def _events(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Holidays (a day of hourly data, a day of daily data) and one-point outliers, multiplicative."""
    out = np.zeros(n)
    span = {"hourly": 24, "daily": 1}.get(frequency)
    if span is not None:
        for _ in range(rng.poisson(n / span / 60)):
            start = int(rng.integers(n))
            out[start : start + span] += rng.uniform(-0.35, 0.1)
    for _ in range(rng.poisson(n / 300)):
        out[rng.integers(n)] += rng.choice([-1, 1]) * rng.uniform(0.2, 1.0)
    return out


def composite(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Level x (trend, shifts, slow drift) with seasonality, additive or multiplicative, and noise."""
    t = np.arange(n) + rng.integers(0, 10_000)
    level = 1 + _trend(rng, n) + _shifts(rng, n) + _ar1(rng, n, rng.uniform(0.9, 0.999), rng.uniform(0, 0.02))
    seasonal = _seasonal(rng, t, frequency) + _events(rng, n, frequency)
    series = level * (1 + seasonal) if rng.random() < 0.5 else level + seasonal
    return series + _noise(rng, n)


def random_walk(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    t = np.arange(n) + rng.integers(0, 10_000)
    walk = np.cumsum(rng.normal(rng.normal(0, 0.01), rng.uniform(0.005, 0.08), n))
    return (
        1 + walk + _seasonal(rng, t, frequency) * rng.uniform(0, 1) + rng.normal(0, rng.uniform(0, 0.05), n)
    )


def intermittent(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Counts: a seasonal Poisson rate, often near zero."""
    t = np.arange(n) + rng.integers(0, 10_000)
    rate = rng.lognormal(rng.uniform(-1.5, 2.5), 0.3) * np.exp(
        0.8 * _seasonal(rng, t, frequency) + _trend(rng, n)
    )
    return rng.poisson(rate).astype(np.float64)


def saturating(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    t = np.arange(n) + rng.integers(0, 10_000)
    growth = 1 / (1 + np.exp(-(np.arange(n) - rng.uniform(0.1, 0.9) * n) / (n * rng.uniform(0.05, 0.3))))
    return (
        1 + rng.uniform(0.5, 3) * growth + _seasonal(rng, t, frequency) * rng.uniform(0, 0.5) + _noise(rng, n)
    )


def state_space(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Exponential smoothing's state space simulated: a level, a damped trend and seasonal states
    that each take a share of the innovations, so the seasonal shape evolves (additive, or
    multiplicative on a log scale)."""
    m = max(1, round((SEASONALITIES[frequency] or (1.0,))[0]))
    alpha, beta, gamma = (
        rng.uniform(0.02, 0.5),
        rng.uniform(0, 0.1) * (rng.random() < 0.5),
        rng.uniform(0, 0.3),
    )
    phi = rng.uniform(0.8, 1.0)
    season = list(_shape(rng, np.arange(m), m, int(rng.integers(1, 4))) * rng.uniform(0, 1.5) * (m > 1))
    level, slope, sigma = 0.0, rng.normal(0, 0.01), rng.uniform(0.02, 0.3)
    out = np.empty(n)
    for i in range(n):
        s = season[i % m]
        e = rng.normal(0, sigma)
        out[i] = level + phi * slope + s + e
        level, slope = level + phi * slope + alpha * e, phi * slope + beta * e
        season[i % m] = s + gamma * e
    return np.exp(out * 0.3) if rng.random() < 0.4 else 10 + out


def schedule(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Held out: on/off blocks (opening hours, working days, peak seasons) with noise and outages."""
    t = np.arange(n) + rng.integers(0, 10_000)
    out = np.ones(n)
    for period in SEASONALITIES[frequency] or (rng.uniform(4, 9),):
        phase = (t % period) / period
        start, width = rng.uniform(0, 1), rng.uniform(0.2, 0.6)
        out += rng.uniform(0.2, 1.0) * (((phase - start) % 1) < width)
    for _ in range(rng.poisson(n / 400)):
        s = int(rng.integers(n))
        out[s : s + int(rng.integers(1, 6))] *= rng.uniform(0.1, 0.6)
    return out * (1 + rng.normal(0, rng.uniform(0.02, 0.1), n))


def seasonal_ar(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Held out: stochastic seasonality, y_t = phi_s y_{t-m} + phi y_{t-1} - phi phi_s y_{t-m-1} + e_t."""
    m = max(1, round((SEASONALITIES[frequency] or (1.0,))[0]))
    phi_s, phi = rng.uniform(0.6, 0.97), rng.uniform(0, 0.8)
    e = rng.normal(0, 1, n + 3 * m + 1)
    y = np.zeros_like(e)
    y[: m + 1] = rng.normal(0, 3, m + 1)
    for i in range(m + 1, len(e)):
        y[i] = phi_s * y[i - m] + phi * y[i - 1] - phi * phi_s * y[i - m - 1] + e[i]
    return 20 + y[-n:]


def exponential(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Held out: log-linear growth with multiplicative seasonality and lognormal noise (airline-like)."""
    t = np.arange(n) + rng.integers(0, 10_000)
    log = rng.uniform(0.5, 3) * np.arange(n) / n + _seasonal(rng, t, frequency) * rng.uniform(0.1, 0.5)
    return np.exp(log + rng.normal(0, rng.uniform(0.01, 0.08), n))


def modulated(rng: np.random.Generator, n: int, frequency: str) -> np.ndarray:
    """Held out: seasonal cycles whose amplitude and phase drift, noise whose variance switches regime."""
    t = np.arange(n) + rng.integers(0, 10_000)
    out = np.full(n, 5.0)
    for period in SEASONALITIES[frequency] or (rng.uniform(5, 12),):
        amp = 1 + 0.5 * np.sin(2 * np.pi * np.arange(n) / (n * rng.uniform(0.5, 2)) + rng.uniform(0, 6))
        drift = np.cumsum(rng.normal(0, 0.01, n))
        out += rng.uniform(0.3, 1.5) * amp * np.sin(2 * np.pi * t / period + drift)
    sigma = np.where(np.cumsum(rng.random(n) < 3 / n) % 2 == 0, 0.1, 0.4) * rng.uniform(0.3, 1.5)
    return out + rng.normal(0, 1, n) * sigma


PRETRAIN_FAMILIES = {
    "composite": composite,
    "random_walk": random_walk,
    "intermittent": intermittent,
    "saturating": saturating,
    "state_space": state_space,
}
HELDOUT_FAMILIES = {
    "schedule": schedule,
    "seasonal_ar": seasonal_ar,
    "exponential": exponential,
    "modulated": modulated,
}
FREQUENCY_WEIGHTS = {
    "hourly": 0.3,
    "daily": 0.2,
    "weekly": 0.1,
    "monthly": 0.2,
    "quarterly": 0.1,
    "yearly": 0.1,
}


def corpus(
    count: int, seed: int, families: dict | None = None, frequencies: dict[str, float] | None = None
) -> list[tuple[str, str, np.ndarray]]:
    """`count` series as (family, frequency, values), families drawn evenly, frequencies by weight,
    each at a random scale and offset (sometimes crossing zero)."""
    families = families or PRETRAIN_FAMILIES
    weights = frequencies or FREQUENCY_WEIGHTS
    names = list(weights)
    p = np.asarray([weights[k] for k in names])
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        family = list(families)[i % len(families)]
        frequency = names[rng.choice(len(names), p=p / p.sum())]
        low, high = LENGTHS[frequency]
        n = int(rng.integers(low, high + 1))
        values = families[family](rng, n, frequency)
        scale, offset = rng.lognormal(2, 2), (rng.normal(0, 1) if rng.random() < 0.1 else 0.0)
        out.append((family, frequency, (values + offset) * scale))
    return out


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
    """Hourly load (MW) of a synthetic city of ~1 GW, its temperature (°C) and whether the day is a
    public holiday (1/0; weekends are not flagged: the weekly season says those)."""
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
        "holiday": [int(s.date() in holidays) for s in stamps],
    }


def resolve_series(source: str, seed: int) -> tuple[Path, str]:
    """(CSV path, value column) for a series source; `generated:city-load` is written once."""
    if source == "generated:city-load":
        path = data_cache() / f"city-load-holidays-seed{seed}.csv"  # the holiday column came later
        return (path if path.is_file() else write_csv(path, city_load(seed=seed))), "load_mw"
    if source.startswith(("generated:", "builtin:")):
        raise ValueError(f"unknown series source {source!r}; known: generated:city-load, or a CSV path")
    return Path(source).expanduser(), "value"


# what a period of each frequency is called in messages, and the spacing (days) of its timestamps
UNITS = {
    "hourly": "hour",
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "quarterly": "quarter",
    "yearly": "year",
}
SPACING_DAYS = {
    "hourly": 1 / 24,
    "daily": 1.0,
    "weekly": 7.0,
    "monthly": 30.44,
    "quarterly": 91.3,
    "yearly": 365.25,
}


def period_index(stamp: dt.datetime, frequency: str) -> int:
    """The number of the period (hour, day, week, month, quarter, year) a timestamp falls in.
    Hours are counted in UTC where the timestamp has an offset (a DST change neither repeats nor
    skips an hour); longer periods use the timestamp's own calendar date."""
    if frequency == "hourly":
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
        return int((stamp - dt.datetime(1970, 1, 1)).total_seconds() // 3600)
    day = stamp.date()
    if frequency == "daily":
        return day.toordinal()
    if frequency == "weekly":
        return (day.toordinal() - 1) // 7  # weeks from a Monday: any one weekday per week lines up
    if frequency == "monthly":
        return day.year * 12 + day.month - 1
    if frequency == "quarterly":
        return day.year * 4 + (day.month - 1) // 3
    if frequency == "yearly":
        return day.year
    raise ValueError(f"unknown frequency {frequency!r}; known: {', '.join(UNITS)}")


def detect_frequency(stamps: list[dt.datetime]) -> str | None:
    """The frequency whose spacing is nearest the median spacing of distinct timestamps (None when
    that is under half an hour or over two years: no frequency served fits)."""
    ordered = sorted({s.astimezone(dt.UTC).replace(tzinfo=None) if s.tzinfo else s for s in stamps})
    if len(ordered) < 2:
        return None
    gaps = [(b - a).total_seconds() / 86400 for a, b in itertools.pairwise(ordered)]
    median = float(np.median(gaps))
    if not 1 / 48 <= median <= 730:
        return None
    return min(SPACING_DAYS, key=lambda f: abs(np.log(median / SPACING_DAYS[f])))


def csv_header(path: Path) -> list[str]:
    """A CSV file's column names (none for a missing or empty file: reading it says what is wrong)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh), [])


def read_series_csv(
    path: Path, value_column: str = "value", time_column: str = "timestamp", frequency: str = "hourly"
) -> np.ndarray:
    """A CSV of (timestamp, value) rows → a float64 series of `frequency` (one value per hour, day,
    week, month, quarter or year) in time order. Rows in the same period: the last one counts.
    Missing periods and empty cells become gaps; gaps of at most MAX_GAP periods are interpolated,
    longer ones refused. Timestamps spaced for another frequency are refused, naming it."""
    return read_series_table(path, [value_column], time_column, frequency)[0]


def read_series_table(
    path: Path, columns: list[str], time_column: str = "timestamp", frequency: str = "hourly"
) -> np.ndarray:
    """(len(columns), periods): `read_series_csv` for several columns of one CSV (the first is the
    value column, read as `value` where the CSV has that instead; the rest are covariates)."""
    if frequency not in UNITS:
        raise ValueError(f"unknown frequency {frequency!r}; known: {', '.join(UNITS)}")
    unit = UNITS[frequency]
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        columns = list(columns)
        if columns[0] not in header and "value" in header:
            columns[0] = "value"
        missing = {time_column, *columns} - set(header)
        if missing:
            raise ValueError(f"{path}: CSV header lacks column(s) {sorted(missing)} (has {header})")
        stamps: list[dt.datetime] = []
        points: dict[int, list[float]] = {}
        for n, row in enumerate(reader, 2):
            try:
                stamp = dt.datetime.fromisoformat((row[time_column] or "").strip())
            except ValueError:
                raise ValueError(
                    f"{path}:{n}: {time_column} {row[time_column]!r} is not an ISO 8601 timestamp"
                ) from None
            values = []
            for column in columns:
                cell = (row[column] or "").strip()
                try:
                    values.append(float(cell) if cell else np.nan)
                except ValueError:
                    raise ValueError(f"{path}:{n}: {column} {cell!r} is not a number") from None
            stamps.append(stamp)
            points[period_index(stamp, frequency)] = values
    if len(stamps) < 2:
        raise ValueError(f"{path}: fewer than two rows")
    detected = detect_frequency(stamps)
    if detected != frequency:
        looks = f"a {detected} series" if detected else "no frequency served (hourly to yearly)"
        raise ValueError(
            f"{path}: the timestamps are spaced like {looks}, but the {frequency} series is asked for"
            + (f"; pass --frequency {detected} (or set preprocessing.frequency)" if detected else "")
        )
    first, last = min(points), max(points)
    empty = [np.nan] * len(columns)
    table = np.array([points.get(i, empty) for i in range(first, last + 1)]).T
    for column, series in zip(columns, table):
        gaps = np.isnan(series)
        longest = max((end - start for start, end in missing_runs(gaps)), default=0)
        if longest > MAX_GAP:
            raise ValueError(
                f"{path}: a gap of {longest} {unit}s in {column}; at most {MAX_GAP} are interpolated "
                "(fill or cut the series)"
            )
        interpolate(series, gaps)
    return table
