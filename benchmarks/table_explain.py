"""Table explanations and the fraud model, measured in one run:

1. `card-fraud` quality from its manifest (test split, the same alert budget for everyone): the
   model, its two parts alone (MLP, autoencoder) and the baselines (HistGradientBoosting,
   IsolationForest): PR-AUC, recall and precision at the budget, recall on the held-out pattern.
2. What an explanation costs: for each table model, served latency of one-row requests with
   `explain` off and on (a real BentoML server, one client, back to back), and the model rows an
   explanation runs.
3. Additivity on every row of each model's test split, explained as served (in process).
4. How close the sampled Shapley values are to the exact ones: the exact interventional Shapley
   values against the same background (every coalition enumerated) for some rows of `credit-risk`
   and `card-fraud`, and the sampled ones as served.

Writes benchmarks/results/table_explain.{json,md}. Run: `python benchmarks/table_explain.py`
after building `credit-risk`, `diagnosis` and `card-fraud` (`make models`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import closed_loop_sweep, server, tuneserve_server, write_results
from serving.loadtest.payloads import json_payload
from serving.manifest import load_manifest
from serving.runtime import load_model
from serving.settings import Settings
from serving.tasks.tabular import TabularRequest, sample_rows

MODELS = ("credit-risk", "diagnosis", "card-fraud")
ROUTE = "/v1/tabular/predict"


def rows_for(model: str, count: int) -> list[dict]:
    """Requests' rows as a client sends them: generated applications, the bundled cancer data, the
    generated transaction stream (raw, the card-velocity features left to the server)."""
    from training.data.tables import resolve_table

    if model == "credit-risk":
        return sample_rows(count)
    if model == "diagnosis":
        with open(resolve_table("builtin:breast-cancer", 0), newline="") as fh:
            return [
                {k: float(v) for k, v in row.items() if k != "diagnosis"}
                for row in list(csv.DictReader(fh))[-count:]
            ]
    with open(resolve_table("generated:card-transactions", 7), newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [row for _, row in zip(range(count), reader)]
    for row in rows:
        for key in ("transaction_id", "fraud", "pattern"):
            row.pop(key)
        row["amount"], row["card_age_days"] = float(row["amount"]), float(row["card_age_days"])
        row["new_device"] = row["new_device"] == "yes"
    return rows


def fraud_quality(model_dir: Path) -> dict:
    m = load_manifest(model_dir)
    metrics = m.metrics
    served = m.variants[m.default_variant["cpu"]].metrics
    keys = ("pr_auc", "recall_at_alert_budget", "precision_at_alert_budget", "holdout_recall", "flagged_rate")
    parts = metrics["anomaly"]["test_parts_at_alert_budget"]
    return {
        "alert_rate": m.preprocessing["alert_rate"],
        "holdout": "cash_out",
        "holdout_n": served.get("holdout_n"),
        "methods": {
            f"card-fraud ({m.default_variant['cpu']})": {k: served.get(k) for k in keys},
            "MLP alone": {k: parts["mlp"].get(k) for k in keys},
            "autoencoder alone": {k: parts["autoencoder"].get(k) for k in keys},
            "HistGradientBoosting": {k: metrics["baseline_hist_gradient_boosting"].get(k) for k in keys},
            "IsolationForest": {k: metrics["baseline_isolation_forest"].get(k) for k in keys},
        },
        "combination": metrics["anomaly"]["combination"],
        "alarms": metrics["anomaly"]["alarms"],
    }


def exact_shapley(task, row: dict) -> tuple[float, np.ndarray]:
    """(base, exact interventional Shapley values) of one row against the model's background: the
    value function on every coalition, averaged over the background rows."""
    encoded = task.encoder.encode(task_rows(task, [row]))
    sampler = task.sampler
    features = sampler.features
    m = len(features)
    masks = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)  # (2^m, m)
    _space, f = task.value_function(int(task.positive) if task.positive is not None else 0)
    values = np.zeros(2**m)
    for b in range(sampler.size):
        feeds = {
            name: np.where(
                sampler.columns_of(name, masks), encoded[name][0][None, :], background[b][None, :]
            ).astype(background.dtype)
            for name, background in sampler.background.items()
        }
        (logits,) = task.session.run(None, feeds)
        values += f(logits)
    values /= sampler.size
    phi = np.zeros(m)
    sizes = masks.sum(1)
    weight = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    for j in range(m):
        without = np.flatnonzero(~masks[:, j])
        phi[j] = (weight[sizes[without]] * (values[without + (1 << j)] - values[without])).sum()
    return float(values[0]), phi


def task_rows(task, rows: list[dict]) -> list[dict]:
    from serving.processing.transactions import derive

    return derive(rows, task.derive) if task.derive else rows


def accuracy(model_dir: Path, rows: list[dict], permutations: int) -> dict:
    model = load_model(model_dir, Settings(threads=1, explain_permutations=permutations))
    task = model.task
    errors, scales, worst = [], [], 0.0
    for row in rows:
        served = task.predict(TabularRequest(model=model.name, rows=[row], explain=True))["predictions"][0]
        explanation = served["explanation"]
        base, exact = exact_shapley(task, row)
        sampled = np.array([explanation["contributions"][f.name] for f in task.sampler.features])
        errors.append(np.abs(sampled - exact).mean())
        scales.append(np.abs(exact).mean())
        worst = max(worst, float(np.abs(sampled - exact).max()))
        assert abs(base - explanation["base"]) < 1e-6
    return {
        "rows": len(rows),
        "features": len(task.sampler.features),
        "permutations": permutations,
        "mean_abs_error": float(np.mean(errors)),
        "mean_abs_exact": float(np.mean(scales)),
        "relative_error": float(np.mean(errors) / np.mean(scales)),
        "max_abs_error": worst,
    }


def additivity(model_dir: Path, limit: int | None) -> dict:
    """max |base + Σ contributions − value| over the model's whole test split (or its first `limit`
    rows), explained as served: Rows blocks of 16 through the task's `run`."""
    import time

    from serving.tasks.tabular import Rows
    from training.backbones import get_backbone
    from training.recipe import load_recipe
    from training.tasks import TASKS as TRAINING_TASKS

    manifest = load_manifest(model_dir)
    recipe = load_recipe(manifest.name)
    splits = TRAINING_TASKS[recipe.task](recipe, get_backbone(recipe.backbone)).load_data()
    test = splits.test.inputs
    n = len(test["numeric"]) if limit is None else min(limit, len(test["numeric"]))
    task = load_model(model_dir, Settings(threads=1)).task
    worst, started = 0.0, time.perf_counter()
    for start in range(0, n, 16):
        block = Rows({k: v[start : min(start + 16, n)] for k, v in test.items()}, explain=True)
        for p in task.run([block])[0]:
            e = p["explanation"]
            worst = max(worst, abs(e["base"] + sum(e["contributions"].values()) - e["value"]))
    return {"rows": n, "max_abs_gap": worst, "ms_per_row": (time.perf_counter() - started) * 1e3 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "exported"))
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    repository = Path(args.repository)
    settings = Settings()

    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "fraud": fraud_quality(repository / "card-fraud"),
        "latency": [],
        "accuracy": {},
    }
    argv, port, env = tuneserve_server(repository)
    with server(argv, port, env | {"TUNESERVE_MODELS": ",".join(MODELS)}) as base:
        for model in MODELS:
            rows = rows_for(model, 64)
            task = load_model(repository / model, Settings(threads=1)).task
            for explain in (False, True):
                payloads = [json_payload({"model": model, "rows": [row], "explain": explain}) for row in rows]
                (row,) = closed_loop_sweep(
                    base, ROUTE, payloads, [1], args.seconds, f"{model} explain={explain}"
                )
                report["latency"].append(
                    {
                        "model": model,
                        "explain": explain,
                        "features": len(task.encoder.features),
                        "rows_per_explanation": task.sampler.rows_per_explanation if explain else 0,
                        **{k: row[k] for k in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "errors")},
                    }
                )
    report["additivity"] = {}
    for model in MODELS:
        report["additivity"][model] = additivity(repository / model, None)
        print(model, "additivity", report["additivity"][model], flush=True)
    for model in ("credit-risk", "card-fraud"):
        rows = rows_for(model, 24)[-12:]
        report["accuracy"][model] = accuracy(repository / model, rows, settings.explain_permutations)
        print(model, report["accuracy"][model], flush=True)
    write_results("table_explain", report, markdown(report))


def markdown(d: dict) -> list[str]:
    from benchmarks.report import table_explain

    return ["# Table explanations and card fraud", "", *table_explain(d)]


if __name__ == "__main__":
    main()
