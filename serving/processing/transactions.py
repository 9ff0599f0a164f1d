"""Card transactions → the features a fraud model sees, computed from the raw stream (numpy only).

A model whose manifest's `preprocessing.derive` is `{"kind": "card-velocity", ...}` takes raw
transactions: a card id, a time, an amount, the merchant's country and the card's home country,
plus its other features. The same function derives, for training (over the whole generated or
user-supplied stream) and for serving (over the rows of one request), per transaction:

- `hour`: hour of the day (0-23, fractional) in the timestamp's own offset (UTC when none);
- `foreign`: whether the country differs from the card's home country;
- `log_minutes_since_last`: log1p of minutes since the card's previous transaction (capped at a week);
- `txn_count_1h`, `txn_count_24h`: the card's previous transactions in the last hour / day;
- `amount_sum_1h`, `amount_sum_24h`: their total amount;
- `amount_vs_recent`: the amount over the mean of the card's previous day of transactions (1 without any).

"Previous" means strictly earlier in time, or at the same time but earlier in the input; the
transaction itself is never counted. The server keeps no state between requests: the history a
request's rows can see is the request's own rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from serving.errors import InputError

DERIVED = [
    "hour",
    "foreign",
    "log_minutes_since_last",
    "txn_count_1h",
    "txn_count_24h",
    "amount_sum_1h",
    "amount_sum_24h",
    "amount_vs_recent",
]
NUMERIC_DERIVED = [name for name in DERIVED if name != "foreign"]
WEEK_MINUTES = 7 * 24 * 60.0
# Times are seconds since the epoch; anything outside these years is a typo or a unit mistake (ms).
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


class DeriveError(InputError):
    """A raw transaction the derivation cannot take; the message names the row and the field."""


def parse_time(value: Any, where: str) -> tuple[float, float]:
    """(seconds since the epoch, hour of the day in the value's own offset) of an ISO 8601 string
    (`2026-03-01T14:05:00Z`, `+02:00` offsets, or naive = UTC) or of epoch seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DeriveError(f"{where}: expected an ISO 8601 time or epoch seconds, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise DeriveError(f"{where}: {value[:40]!r} is not an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if not EARLIEST <= moment < LATEST:
            raise DeriveError(f"{where}: {value[:40]!r} is outside 1970-2199")
        hour = moment.hour + moment.minute / 60 + moment.second / 3600
        return moment.timestamp(), hour
    seconds = float(value)
    if not math.isfinite(seconds) or not EARLIEST.timestamp() <= seconds < LATEST.timestamp():
        raise DeriveError(f"{where}: {value!r} is not epoch seconds between 1970 and 2199")
    return seconds, (seconds % 86_400) / 3600


def _card(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    if type(value) is int:
        return str(value)
    raise DeriveError(f"{where}: expected a non-empty string or integer card id, got {value!r:.40}")


def _amount(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeriveError(f"{where}: expected a finite number, got {value!r:.40}")
    return float(value)


def velocity(cards: np.ndarray, seconds: np.ndarray, amounts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-transaction history features of `cards` (any hashable codes), times and amounts, in input
    order; vectorised: sort by (card, time, input position), then window starts by binary search."""
    n = len(cards)
    _, card_codes = np.unique(cards, return_inverse=True)
    order = np.lexsort((np.arange(n), seconds, card_codes))
    card_sorted, t, a = card_codes[order], seconds[order], amounts[order]
    # A key that increases within a card and jumps between cards, so one searchsorted finds windows.
    span = float(t.max() - t.min()) + 2 * 86_400 + 1 if n else 1.0
    key = card_sorted * span + (t - (t.min() if n else 0.0))
    position = np.arange(n)
    cumulative = np.concatenate([[0.0], np.cumsum(a)])
    out: dict[str, np.ndarray] = {}
    for label, width in (("1h", 3600.0), ("24h", 86_400.0)):
        start = np.searchsorted(key, key - width, side="left")
        # transactions of the same card strictly before this one, within the window
        out[f"txn_count_{label}"] = (position - start).astype(np.float64)
        out[f"amount_sum_{label}"] = cumulative[position] - cumulative[start]
    first = np.r_[True, card_sorted[1:] != card_sorted[:-1]]
    gap = np.r_[0.0, np.diff(t)] / 60.0
    gap[first] = WEEK_MINUTES
    out["log_minutes_since_last"] = np.log1p(np.minimum(gap, WEEK_MINUTES))
    count, total = out["txn_count_24h"], out["amount_sum_24h"]
    out["amount_vs_recent"] = np.where(count > 0, a / np.maximum(total / np.maximum(count, 1), 0.01), 1.0)
    restored = np.empty(n, dtype=np.int64)
    restored[order] = position
    return {k: v[restored] for k, v in out.items()}


def derive_columns(
    cards: Sequence[str],
    times: Sequence[Any],
    amounts: np.ndarray,
    countries: Sequence[Any],
    homes: Sequence[Any],
) -> dict[str, list[Any]]:
    """The derived features as columns (training's path over a whole CSV; `derive` for requests).
    `foreign` is None where either country is missing."""
    n = len(cards)
    seconds, hours = np.empty(n), np.empty(n)
    for i, value in enumerate(times):
        seconds[i], hours[i] = parse_time(value, f"row {i}")
    history = velocity(np.asarray(cards, dtype=str), seconds, np.asarray(amounts, dtype=np.float64))
    out: dict[str, list[Any]] = {"hour": hours.tolist()}
    out["foreign"] = [None if c is None or h is None else c != h for c, h in zip(countries, homes)]
    out |= {name: column.tolist() for name, column in history.items()}
    return {name: out[name] for name in DERIVED}


def derive(rows: Sequence[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Raw transactions → the model's rows: the card and time fields replaced by the derived
    features (the amount, countries and other fields kept). Raises DeriveError naming row and field."""
    card_field, time_field = config["card"], config["time"]
    amount_field, country, home = config["amount"], config["country"], config["home_country"]
    cards, amounts = [], np.empty(len(rows))
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DeriveError(
                f"rows[{i}]: expected an object of transaction fields, got {type(row).__name__}"
            )
        sent = sorted(set(DERIVED) & row.keys())
        if sent:
            raise DeriveError(
                f"rows[{i}]: {sent} are computed by the server from {card_field!r} and {time_field!r}; "
                "do not send them"
            )
        for name in (card_field, time_field, amount_field):
            if row.get(name) is None:
                raise DeriveError(f"rows[{i}]: missing required field {name!r} (a raw transaction)")
        cards.append(_card(row[card_field], f"rows[{i}].{card_field}"))
        amounts[i] = _amount(row[amount_field], f"rows[{i}].{amount_field}")
        parse_time(row[time_field], f"rows[{i}].{time_field}")  # names the row before the batch call
    columns = derive_columns(
        cards,
        [row[time_field] for row in rows],
        amounts,
        [row.get(country) for row in rows],
        [row.get(home) for row in rows],
    )
    out = []
    for i, row in enumerate(rows):
        here = {k: v for k, v in row.items() if k not in (card_field, time_field)}
        for name, column in columns.items():
            if column[i] is not None:
                here[name] = column[i]
        out.append(here)
    return out


def raw_fields(config: dict[str, Any]) -> list[str]:
    """The fields a raw transaction must carry that are not model features themselves."""
    return [config["card"], config["time"]]
