"""Tables for tabular classification: CSV files with a header row, and the two built-in sources.

Sources: a CSV path; `generated:credit-applications` (a synthetic but realistic credit-application
book, below); `generated:card-transactions` (a card-transaction stream with rare fraud,
training/data/transactions.py); `builtin:breast-cancer` (scikit-learn's bundled Wisconsin diagnostic data, 569 rows,
30 numeric features). Built-in sources are written once as CSV under runs/data/ and then read like
any user file, so the same path is exercised.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from serving.tasks.tabular import EMPLOYMENT, HOME, PURPOSES
from training.data.images import data_cache

DEFAULT_RATE = 0.10


def generate_credit_applications(rows: int = 24_000, seed: int = 11) -> dict[str, list]:
    """Credit applications with a `default` outcome ("yes" for about 10%), deterministic from `seed`.

    Applicants: age 21-75; employment type (retired mostly past 60); annual income log-normal by
    employment and age (3% not reported); housing (owning grows with age); credit history length
    (bounded by age); open credit lines; revolving utilisation; debt-to-income; delinquencies in the
    last 2 years; loan purpose, amount (by purpose and income) and term; a co-signer flag.

    Hidden risk (log-odds, never given to the model): higher with debt-to-income, utilisation,
    delinquencies, loan-to-income, long terms, small-business loans and unemployment; lower with
    income, history length, home ownership and a co-signer; interactions: self-employed applicants
    with high debt-to-income, young applicants with short histories, and delinquencies combined with
    high utilisation are riskier than each alone; plus applicant-level noise. The intercept is set so
    that about 10% default.
    """
    rng = np.random.default_rng(seed)
    n = rows
    age = np.clip(rng.normal(42, 12, n), 21, 75).round().astype(int)
    p_emp = np.where(age[:, None] >= 60, [0.25, 0.12, 0.05, 0.03, 0.55], [0.66, 0.15, 0.11, 0.06, 0.02])
    employment = np.array([rng.choice(5, p=p) for p in p_emp])
    career = np.exp(-(((age - 48) / 18.0) ** 2))
    base_income = np.array([52_000, 61_000, 45_000, 14_000, 30_000])[employment]
    income = base_income * (0.7 + 0.6 * career) * rng.lognormal(0, 0.45, n)
    p_home = np.clip(
        np.stack([0.7 - 0.011 * (age - 21), 0.25 + 0.006 * (age - 21), 0.05 + 0.005 * (age - 21)], 1),
        0.02,
        None,
    )
    home = np.array([rng.choice(3, p=p / p.sum()) for p in p_home])
    history = np.minimum(age - 18, rng.gamma(2.2, 4.5, n)).round(1)
    lines = rng.poisson(3 + history / 4)
    utilisation = rng.beta(2.0, 4.0, n)
    dti = np.clip(rng.gamma(4.0, 0.07, n), 0.0, 0.95)
    purpose = rng.choice(len(PURPOSES), n, p=[0.38, 0.14, 0.16, 0.07, 0.06, 0.07, 0.12])
    purpose_scale = np.array([0.25, 0.3, 0.35, 0.3, 0.12, 0.6, 0.15])[purpose]
    amount = np.clip(income * purpose_scale * rng.lognormal(0, 0.5, n), 1_000, 250_000).round(-2)
    term = np.where(rng.random(n) < 0.3 + 0.3 * (amount > 30_000), 60, 36)
    cosigner = rng.random(n) < 0.08
    latent = rng.normal(0, 1, n)  # unobserved applicant quality: drives delinquencies and default
    delinquencies = rng.poisson(np.exp(-1.6 + 0.7 * latent + 1.2 * utilisation))

    loan_to_income = amount / income
    risk = (
        2.8 * (dti - 0.28)
        + 1.6 * (utilisation - 0.33)
        + 0.45 * np.minimum(delinquencies, 6)
        + 0.9 * np.minimum(loan_to_income, 3.0)
        - 0.55 * np.log(income / 50_000)
        - 0.045 * (history - 9)
        + 0.35 * (term == 60)
        + np.array([0, 0.15, 0.3, 1.0, 0.1])[employment]
        + np.array([0.15, 0.0, -0.35])[home]
        + np.array([0.0, -0.2, -0.1, 0.1, 0.35, 0.65, 0.2])[purpose]
        - 0.6 * cosigner
        + 1.4 * (employment == 1) * np.maximum(dti - 0.4, 0) * 4
        + 0.7 * (age < 27) * (history < 3)
        + 0.5 * (delinquencies > 0) * (utilisation > 0.6)
        + 0.6 * latent
    )
    lo, hi = -10.0, 10.0  # intercept for the target default rate (bisection on the expected rate)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 / (1 + np.exp(-(risk + mid)))).mean() < DEFAULT_RATE else (lo, mid)
    default = rng.random(n) < 1 / (1 + np.exp(-(risk + lo)))

    income_reported = np.where(rng.random(n) < 0.03, np.nan, income.round(-2))
    return {
        "age": age.tolist(),
        "employment": [EMPLOYMENT[i] for i in employment],
        "annual_income": [None if np.isnan(v) else float(v) for v in income_reported],
        "home_ownership": [HOME[i] for i in home],
        "credit_history_years": history.tolist(),
        "open_credit_lines": lines.tolist(),
        "credit_utilization": utilisation.round(3).tolist(),
        "debt_to_income": dti.round(3).tolist(),
        "delinquencies_2y": delinquencies.tolist(),
        "loan_purpose": [PURPOSES[i] for i in purpose],
        "loan_amount": amount.tolist(),
        "term_months": term.tolist(),
        "has_cosigner": ["yes" if c else "no" for c in cosigner],
        "default": ["yes" if d else "no" for d in default],
    }


def breast_cancer_table() -> dict[str, list]:
    """scikit-learn's bundled Wisconsin diagnostic breast-cancer data; feature names with underscores."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = {name.replace(" ", "_"): data.data[:, j].tolist() for j, name in enumerate(data.feature_names)}
    columns["diagnosis"] = [str(data.target_names[t]) for t in data.target]
    return columns


def write_csv(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes (DDP ranks) may write at once
    names = list(columns)
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in zip(*columns.values()):
            writer.writerow(["" if v is None else v for v in row])
    tmp.rename(path)
    return path


def resolve_table(source: str, seed: int) -> Path:
    """A CSV path for a data source (built-in sources are generated into runs/data/ once)."""
    if source == "generated:credit-applications":
        path = data_cache() / f"credit-applications-seed{seed}.csv"
        return path if path.is_file() else write_csv(path, generate_credit_applications(seed=seed))
    if source == "generated:card-transactions":
        from training.data.transactions import generate_card_transactions

        path = data_cache() / f"card-transactions-seed{seed}.csv"
        return path if path.is_file() else write_csv(path, generate_card_transactions(seed=seed))
    if source == "builtin:breast-cancer":
        path = data_cache() / "breast-cancer.csv"
        return path if path.is_file() else write_csv(path, breast_cancer_table())
    if source.startswith(("generated:", "builtin:")):
        raise ValueError(
            f"unknown table source {source!r}; known: generated:credit-applications, generated:card-transactions, builtin:breast-cancer, or a CSV path"
        )
    return Path(source).expanduser()


def read_csv_columns(path: Path) -> dict[str, list[str | None]]:
    """A CSV with a header row → {column: [cell text, or None when empty]}."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty file; expected a header row")
        if len(set(header)) != len(header):
            raise ValueError(f"{path}: duplicate column names in the header")
        columns: dict[str, list[str | None]] = {name: [] for name in header}
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{n}: {len(row)} cells; the header has {len(header)}")
            for name, cell in zip(header, row):
                columns[name].append(cell if cell.strip() else None)
    return columns
