"""End to end against the real server: card-fraud from raw transactions, and explanations of every
table model (additivity on every row, the same answer alone and batched, 4xx for misuse)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.manifest import load_manifest
from serving.tasks.tabular import sample_rows

ROUTE = "/v1/tabular/predict"


def post(server, body, route=ROUTE):
    return httpx.post(f"{server}{route}", json=body, timeout=60)


def transactions(card: str = "c1") -> list[dict]:
    """A card-testing burst: tiny online purchases minutes apart, then a normal one on another card."""
    burst = [
        {
            "card_id": card,
            "timestamp": f"2026-03-01T02:{10 + 2 * i:02d}:00Z",
            "amount": 1.5 + i,
            "merchant_category": "digital_goods",
            "country": "US",
            "home_country": "US",
            "channel": "online",
            "new_device": True,
            "card_age_days": 400,
        }
        for i in range(4)
    ]
    normal = {
        "card_id": "c2",
        "timestamp": "2026-03-01T12:10:00Z",
        "amount": 31.5,
        "merchant_category": "grocery",
        "country": "US",
        "home_country": "US",
        "channel": "chip",
        "new_device": False,
        "card_age_days": 900,
    }
    return [*burst, normal]


def fraud_rows(tiny_repository, count: int) -> list[dict]:
    """Raw transactions of the tiny model's own stream (the CSV it was built from)."""
    import csv

    with open(tiny_repository.parent / "card-transactions-small.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:count]
    for row in rows:
        row.pop("transaction_id"), row.pop("fraud"), row.pop("pattern")
        row["amount"] = float(row["amount"])
        row["card_age_days"] = float(row["card_age_days"])
        row["new_device"] = row["new_device"] == "yes"
    return rows


def check_additive(prediction: dict) -> dict:
    e = prediction["explanation"]
    assert abs(e["base"] + sum(e["contributions"].values()) - e["value"]) <= 1e-4, e
    if e["space"] == "log_odds":
        p = prediction["scores"][e["label"]]
        if 1e-6 < p < 1 - 1e-6:
            assert math.isclose(e["value"], math.log(p / (1 - p)), rel_tol=1e-3, abs_tol=1e-3)
    return e


def test_card_fraud_answers_raw_transactions_with_alerts_and_anomaly_scores(server, tiny_repository):
    manifest = load_manifest(tiny_repository / "card-fraud")
    config = manifest.preprocessing
    assert config["derive"]["kind"] == "card-velocity" and config["alert_rate"] == 0.03
    r = post(server, {"model": "card-fraud", "rows": transactions()})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 5
    for p in predictions:
        assert p["alert"] == (p["scores"]["yes"] >= config["threshold"]) == (p["label"] == "yes")
        assert isinstance(p["anomaly_score"], float) and math.isfinite(p["anomaly_score"])
    # the last purchase of the burst is scored with its history: alone it is another transaction
    alone = post(server, {"model": "card-fraud", "rows": transactions()[3:4]}).json()["predictions"][0]
    assert alone["scores"]["yes"] != pytest.approx(predictions[3]["scores"]["yes"], rel=1e-6, abs=1e-9)


def test_explanations_are_additive_on_every_row_of_every_table_model(server, tiny_repository):
    import csv

    from training.data.tables import resolve_table

    with open(resolve_table("builtin:breast-cancer", 0), newline="") as fh:
        cancer = [
            {k: float(v) for k, v in row.items() if k != "diagnosis"} for row in list(csv.DictReader(fh))[:32]
        ]
    cases = {
        "credit-risk": sample_rows(32),
        "card-fraud": fraud_rows(tiny_repository, 32),
        "diagnosis": cancer,
    }
    for model, rows in cases.items():
        features = {f["name"] for f in load_manifest(tiny_repository / model).preprocessing["features"]}
        for start in range(0, len(rows), 16):
            r = post(server, {"model": model, "rows": rows[start : start + 16], "explain": True})
            assert r.status_code == 200, (model, r.text)
            for p in r.json()["predictions"]:
                e = check_additive(p)
                assert set(e["contributions"]) == features, model


def test_an_explanation_is_the_same_alone_and_batched_with_other_requests(server):
    row = sample_rows(5)[4]
    alone = post(server, {"model": "credit-risk", "rows": [row], "explain": True}).json()["predictions"][0]

    def ask(i: int) -> dict:
        rows = [row] if i % 2 == 0 else sample_rows(3)
        body = post(server, {"model": "credit-risk", "rows": rows, "explain": i % 3 != 1}).json()
        return body["predictions"][0]

    with ThreadPoolExecutor(8) as pool:
        batched = [p for i, p in enumerate(pool.map(ask, range(24))) if i % 2 == 0 and i % 3 != 1]
    assert batched
    for p in batched:
        for name, value in alone["explanation"]["contributions"].items():
            assert p["explanation"]["contributions"][name] == pytest.approx(value, abs=1e-4)


@pytest.mark.parametrize(
    "route, body, status, message",
    [
        ("/v1/text/classify", {"texts": ["where is my card"], "explain": True}, 400, "explain"),
        (ROUTE, {"model": "credit-risk", "rows": sample_rows(17), "explain": True}, 413, "at most 16"),
        (ROUTE, {"model": "credit-risk", "rows": sample_rows(1), "explain": "yes"}, 400, "explain"),
        (
            ROUTE,
            {"model": "card-fraud", "rows": [dict(transactions()[0], txn_count_1h=0)]},
            400,
            "computed by the server",
        ),
        (
            ROUTE,
            {"model": "card-fraud", "rows": [dict(transactions()[0], timestamp="last tuesday")]},
            400,
            "rows[0].timestamp",
        ),
        (
            ROUTE,
            {"model": "card-fraud", "rows": [{k: v for k, v in transactions()[0].items() if k != "card_id"}]},
            400,
            "'card_id'",
        ),
        (
            ROUTE,
            {"model": "card-fraud", "rows": [dict(transactions()[0], amount=None)]},
            400,
            "'amount'",
        ),
    ],
)
def test_misuse_gets_a_4xx_naming_it(server, route, body, status, message):
    r = post(server, body, route)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()


def test_tuneserve_predict_explain_prints_the_top_contributions(tiny_repository, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in sample_rows(2)))
    cli = Path(sys.executable).with_name("tuneserve")
    out = subprocess.run(
        [str(cli), "predict", "credit-risk", str(rows), "--explain", "--repository", str(tiny_repository)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and "log_odds of 'yes'" in lines[1] and "top:" in lines[1], out.stdout


def test_the_split_is_by_time_and_the_held_out_pattern_only_reaches_test(tmp_path):
    from training.backbones import get_backbone
    from training.data.tables import write_csv
    from training.data.transactions import generate_card_transactions
    from training.recipe import load_recipe
    from training.tasks import TASKS as TRAINING_TASKS

    stream = generate_card_transactions(cards=150, days=20, seed=5, fraud_rate=0.02)
    path = write_csv(tmp_path / "stream.csv", stream)
    recipe = load_recipe("card-fraud").with_overrides({"data.source": str(path)})
    task = TRAINING_TASKS[recipe.task](recipe, get_backbone(recipe.backbone))
    splits = task.load_data()
    n = len(stream["pattern"])
    n_test = round(n * recipe.data.test_fraction)
    order = sorted(range(n), key=lambda i: stream["timestamp"][i])  # ISO strings sort by time
    held = [stream["pattern"][i] == "cash_out" for i in order]
    assert len(splits.test) == n_test
    assert sum(held[n - n_test :]) == int(task.holdout_test[1].sum()) > 0
    kept = n - n_test - sum(held[: n - n_test])
    # validation loses one row when it would be as long as test (metrics tell the splits by length)
    assert len(splits.train) + len(splits.val) in (kept, kept - 1) and len(splits.val) != len(splits.test)
    # velocity features come from the whole stream; the card and time columns are consumed
    names = [f.name for f in task.fitted_encoder.features]
    assert "txn_count_1h" in names and "card_id" not in names and "timestamp" not in names
    assert "pattern" not in names and "transaction_id" not in names


def test_the_fraud_manifest_reports_baselines_parts_and_the_held_out_pattern(tiny_repository):
    manifest = load_manifest(tiny_repository / "card-fraud")
    metrics = manifest.metrics
    for report in (
        metrics["pytorch_test"],
        metrics["baseline_hist_gradient_boosting"],
        metrics["baseline_isolation_forest"],
        *metrics["anomaly"]["test_parts_at_alert_budget"].values(),
    ):
        assert {"pr_auc", "recall_at_alert_budget", "holdout_recall"} <= report.keys(), report
    assert set(metrics["anomaly"]["alarms"]) == {"mlp", "autoencoder"}
    assert "anomaly.onnx" in manifest.files and len(manifest.preprocessing["background"]) == 32
