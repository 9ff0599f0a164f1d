"""A generated stream of card transactions with rare fraud of several hidden kinds (`generated:card-transactions`).

Cards: a home country, a card age, a typical spend (log-normal), preferred merchant categories and
active hours, a daily rate of transactions (0.5-4) and occasional trips abroad. Normal traffic
follows each card's habits: chip, contactless, swipe, online and ATM transactions at its merchants,
in its hours, with amounts around its typical spend (ATM withdrawals at most one a day or so).

Fraud incidents are injected into card streams (about 0.3% of transactions in all), each of one
pattern, recorded in the `pattern` column that is never a feature:

- `card_testing`: a burst of 3-8 tiny online purchases at digital-goods merchants within minutes,
  often on a new device;
- `account_takeover`: 1-3 large online purchases of electronics or jewellery from abroad at night,
  on a new device;
- `skimming`: a cloned magnetic stripe: 2-4 swiped purchases abroad within hours, retail or
  electronics, several times the card's usual amount;
- `cash_out`: 3-6 ATM withdrawals of several hundred within an hour in the home country.

The recipe keeps one pattern (`cash_out` by default) out of training and validation entirely, to
measure what the model catches of a kind of fraud it never saw. Columns: transaction_id, card_id,
timestamp (ISO 8601, UTC), amount, merchant_category, country, home_country, channel, new_device,
card_age_days, fraud ("yes"/"no"), pattern.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "MX", "BR", "JP", "AU"]
HOME_WEIGHTS = np.array([0.34, 0.14, 0.12, 0.1, 0.07, 0.06, 0.05, 0.05, 0.03, 0.02, 0.01, 0.01])
MERCHANTS = [
    "grocery",
    "restaurant",
    "fuel",
    "retail",
    "travel",
    "electronics",
    "jewellery",
    "digital_goods",
    "pharmacy",
    "entertainment",
    "cash",
]
CHANNELS = ["chip", "contactless", "swipe", "online", "atm"]
PATTERNS = ["card_testing", "account_takeover", "skimming", "cash_out"]
START = datetime(2026, 1, 5, tzinfo=UTC)


def generate_card_transactions(
    cards: int = 3000, days: int = 60, seed: int = 7, fraud_rate: float = 0.003
) -> dict[str, list[Any]]:
    """The stream, sorted by time; deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    records: list[
        tuple
    ] = []  # (seconds, card, amount, merchant, country, home, channel, new_device, age, pattern)
    shopping = np.arange(len(MERCHANTS) - 1)  # every merchant but cash
    for card in range(cards):
        home = COUNTRIES[rng.choice(len(COUNTRIES), p=HOME_WEIGHTS / HOME_WEIGHTS.sum())]
        age0 = int(rng.integers(5, 3000))
        spend = float(np.exp(rng.normal(3.3, 0.6)))  # typical purchase, ~27
        prefs = rng.dirichlet(np.full(len(shopping), 0.6))
        rate = float(rng.uniform(0.5, 4.0))
        peak = float(rng.uniform(9, 20))
        channel_mix = rng.dirichlet([3, 3, 1, 2.5, 0.6])
        trip_start = int(rng.integers(0, days)) if rng.random() < 0.15 else -100
        trip_country = COUNTRIES[int(rng.integers(len(COUNTRIES)))]
        count = rng.poisson(rate * days)
        seconds = np.sort(rng.uniform(0, days * 86_400, count))
        # times follow the card's active hours: move each transaction's hour toward the peak
        day = np.floor(seconds / 86_400)
        hour = np.clip(rng.normal(peak, 3.5, count), 0.2, 23.8)
        seconds = np.sort(day * 86_400 + hour * 3600 + rng.uniform(0, 60, count))
        for t in seconds:
            d = int(t // 86_400)
            channel = CHANNELS[rng.choice(5, p=channel_mix)]
            abroad = trip_start <= d < trip_start + 7
            country = trip_country if abroad else home
            if channel == "atm":
                if rng.random() < 0.6:  # cards rarely withdraw twice a day: keep ATM use sparse
                    channel = "chip"
                merchant, amount = "cash", float(rng.choice([20, 40, 50, 60, 80, 100, 200]))
            if channel != "atm":
                merchant = MERCHANTS[int(rng.choice(shopping, p=prefs))]
                scale = {"travel": 8.0, "electronics": 4.0, "jewellery": 5.0, "grocery": 1.5}.get(
                    merchant, 1.0
                )
                amount = round(float(spend * scale * rng.lognormal(0, 0.7)), 2)
            new_device = channel == "online" and rng.random() < 0.04
            records.append((t, card, amount, merchant, country, home, channel, new_device, age0 + d, "none"))
    normal = len(records)
    incidents = _incidents(rng, normal, fraud_rate, cards, days)
    homes = {r[1]: (r[5], r[8] - int(r[0] // 86_400), r[2]) for r in records}
    for pattern, card, t0 in incidents:
        home, age0, _ = homes.get(card, ("US", 400, 30.0))
        records += _fraud(rng, pattern, card, t0, home, age0)
    records.sort(key=lambda r: (r[0], r[1]))
    stamps = [(START + timedelta(seconds=float(r[0]))).strftime("%Y-%m-%dT%H:%M:%SZ") for r in records]
    return {
        "transaction_id": [f"t{i:07d}" for i in range(len(records))],
        "card_id": [f"c{r[1]:05d}" for r in records],
        "timestamp": stamps,
        "amount": [r[2] for r in records],
        "merchant_category": [r[3] for r in records],
        "country": [r[4] for r in records],
        "home_country": [r[5] for r in records],
        "channel": [r[6] for r in records],
        "new_device": ["yes" if r[7] else "no" for r in records],
        "card_age_days": [r[8] for r in records],
        "fraud": ["no" if r[9] == "none" else "yes" for r in records],
        "pattern": [r[9] for r in records],
    }


def _incidents(
    rng: np.random.Generator, normal: int, rate: float, cards: int, days: int
) -> list[tuple[str, int, float]]:
    """(pattern, card, start second) per incident; about `rate` of all transactions end up fraud.
    Each pattern has the same share of incidents; the mean transactions per incident is ~3.5."""
    wanted = rate * normal / (1 - rate) / 3.5
    count = max(len(PATTERNS), round(wanted))
    return [
        (PATTERNS[i % len(PATTERNS)], int(rng.integers(cards)), float(rng.uniform(86_400, days * 86_400)))
        for i in range(count)
    ]


def _fraud(rng: np.random.Generator, pattern: str, card: int, t0: float, home: str, age0: int) -> list[tuple]:
    abroad = [c for c in COUNTRIES if c != home]
    out = []

    def add(t: float, amount: float, merchant: str, country: str, channel: str, new_device: bool) -> None:
        out.append(
            (
                t,
                card,
                round(amount, 2),
                merchant,
                country,
                home,
                channel,
                new_device,
                age0 + int(t // 86_400),
                pattern,
            )
        )

    if pattern == "card_testing":
        t, device = t0, rng.random() < 0.7
        for _ in range(int(rng.integers(3, 9))):
            add(
                t,
                float(rng.uniform(0.5, 4.0)),
                "digital_goods",
                home if rng.random() < 0.6 else str(rng.choice(abroad)),
                "online",
                device,
            )
            t += float(rng.uniform(20, 300))
    elif pattern == "account_takeover":
        night = np.floor(t0 / 86_400) * 86_400 + float(rng.uniform(0.5, 5.5)) * 3600
        country = str(rng.choice(abroad))
        for k in range(int(rng.integers(1, 4))):
            add(
                night + k * float(rng.uniform(300, 1800)),
                float(rng.uniform(400, 2500)),
                str(rng.choice(["electronics", "jewellery"])),
                country,
                "online",
                rng.random() < 0.85,
            )
    elif pattern == "skimming":
        country = str(rng.choice(abroad))
        t = t0
        for _ in range(int(rng.integers(2, 5))):
            add(
                t,
                float(rng.uniform(150, 900)),
                str(rng.choice(["retail", "electronics", "jewellery"])),
                country,
                "swipe",
                False,
            )
            t += float(rng.uniform(900, 4 * 3600))
    else:  # cash_out
        t = t0
        for _ in range(int(rng.integers(3, 7))):
            add(t, float(rng.choice([300, 400, 500, 600, 800])), "cash", home, "atm", False)
            t += float(rng.uniform(120, 900))
    return out
