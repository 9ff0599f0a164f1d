"""End to end against the real server: /v1/tabular/predict and /v1/forecast, bad input included."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from serving.manifest import load_manifest
from serving.tasks.forecasting import sample_histories as _series
from serving.tasks.tabular import sample_rows as _rows
from training.data.series import city_load


def _post(server, route, body, raw: bytes | None = None):
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(
        f"{server}{route}", content=content, headers={"content-type": "application/json"}, timeout=60
    )


def test_credit_risk_rows_are_scored_and_thresholded(server, tiny_repository):
    manifest = load_manifest(tiny_repository / "credit-risk")
    threshold = manifest.preprocessing["threshold"]
    rows = _rows(40)
    r = _post(server, "/v1/tabular/predict", {"model": "credit-risk", "rows": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["model"] == "credit-risk"
        and body["version"] == manifest.version
        and len(body["predictions"]) == 40
    )
    for p in body["predictions"]:
        assert set(p["scores"]) == {"no", "yes"} and math.isclose(
            sum(p["scores"].values()), 1.0, abs_tol=1e-5
        )
        assert p["label"] == ("yes" if p["scores"]["yes"] >= threshold else "no")
        assert p["score"] == p["scores"][p["label"]]


def test_a_row_gets_the_same_answer_alone_in_a_block_and_under_concurrency(server):
    rows = _rows(24)
    together = _post(server, "/v1/tabular/predict", {"rows": rows}).json()[
        "predictions"
    ]  # default model: credit-risk
    with ThreadPoolExecutor(12) as pool:
        alone = list(
            pool.map(
                lambda row: _post(
                    server, "/v1/tabular/predict", {"model": "credit-risk", "rows": [row]}
                ).json()["predictions"][0],
                rows,
            )
        )
    for a, b in zip(together, alone):
        assert a["label"] == b["label"] and abs(a["scores"]["yes"] - b["scores"]["yes"]) < 1e-5


def test_unseen_categories_and_imputed_features_are_answered(server):
    row = dict(_rows(1)[0], employment="astronaut", loan_purpose="spaceship")
    del row["annual_income"]  # had gaps in training: imputed
    r = _post(
        server, "/v1/tabular/predict", {"model": "credit-risk", "rows": [row, dict(row, annual_income=None)]}
    )
    assert r.status_code == 200, r.text
    a, b = r.json()["predictions"]
    assert a == b


def test_diagnosis_serves_its_own_schema(server):
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rows = [
        {name.replace(" ", "_"): float(v) for name, v in zip(data.feature_names, x)} for x in data.data[:30]
    ]
    r = _post(server, "/v1/tabular/predict", {"model": "diagnosis", "rows": rows})
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["predictions"]]
    assert set(labels) <= {"malignant", "benign"}


def test_implausible_feature_values_are_refused_not_scored(server):
    """Every measurement at 1e30 once scored `benign` with certainty; now the row is refused."""
    from sklearn.datasets import load_breast_cancer

    names = [name.replace(" ", "_") for name in load_breast_cancer().feature_names]
    r = _post(server, "/v1/tabular/predict", {"model": "diagnosis", "rows": [dict.fromkeys(names, 1e30)]})
    assert r.status_code == 400 and "is implausible: training saw" in r.json()["error"], r.text


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": "credit-risk", "rows": [{"age": 41}]}, 400, "rows[0]: missing required feature(s)"),
        (
            {"model": "credit-risk", "rows": [dict(_rows(1)[0], colour="red")]},
            400,
            "rows[0]: unknown feature(s) ['colour']",
        ),
        (
            {"model": "credit-risk", "rows": [_rows(1)[0], dict(_rows(1)[0], age="forty")]},
            400,
            "rows[1].age: expected a number, got string",
        ),
        (
            {"model": "credit-risk", "rows": [dict(_rows(1)[0], has_cosigner="maybe")]},
            400,
            "rows[0].has_cosigner: expected true or false",
        ),
        (
            {"model": "credit-risk", "rows": [dict(_rows(1)[0], age=None)]},
            400,
            "rows[0].age: null is not allowed",
        ),
        ({"model": "credit-risk", "rows": [7]}, 400, "rows[0]: expected an object"),
        ({"model": "credit-risk", "rows": []}, 400, "rows"),
        ({"model": "credit-risk", "rows": "all of them"}, 400, "rows"),
        ({"model": "credit-risk", "rows": [_rows(1)[0]] * 1001}, 413, "rows: 1001 rows; at most 1000"),
        ({"model": "credit-risk", "rows": [_rows(1)[0]], "extra": 1}, 400, "extra"),
        ({"model": "no-such-model", "rows": [{}]}, 404, "unknown model 'no-such-model'"),
        ({"model": "intent", "rows": [{}]}, 400, "send it to /v1/text/classify"),
        ({"model": "energy-demand", "rows": [{}]}, 400, "send it to /v1/forecast"),
    ],
)
def test_bad_tabular_requests_get_4xx_naming_row_and_column(server, body, status, message):
    r = _post(server, "/v1/tabular/predict", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            json.dumps({"model": "credit-risk", "rows": [dict(_rows(1)[0], age=float("nan"))]}).encode(),
            "rows[0].age: NaN is not allowed",
        ),
        (
            json.dumps(
                {"model": "credit-risk", "rows": [dict(_rows(1)[0], debt_to_income=float("-inf"))]}
            ).encode(),
            "rows[0].debt_to_income: -inf is not a finite",
        ),
        (b'{"model": "credit-risk", "rows": [', "not valid JSON"),
        (b"", "empty"),
    ],
)
def test_nan_inf_and_malformed_json(server, raw, message):
    r = _post(server, "/v1/tabular/predict", None, raw=raw)
    assert r.status_code == 400 and message in r.json()["error"]


def test_forecast_quantiles_are_ordered_and_scale_with_the_history(server, tiny_repository):
    manifest = load_manifest(tiny_repository / "energy-demand")
    history = _series(1)[0]
    r = _post(server, "/v1/forecast", {"model": "energy-demand", "history": history, "horizon": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    q = body["quantiles"]
    assert (
        body["horizon"] == 12
        and len(body["forecast"]) == 12
        and body["forecast"] == q["p50"]
        and body["interpolated"] == 0
    )
    assert all(lo <= mid <= hi for lo, mid, hi in zip(q["p10"], q["p50"], q["p90"]))
    # scaling is done in the server from the history: a rescaled history gets a rescaled forecast
    scaled = _post(
        server, "/v1/forecast", {"history": [10 * v + 5000 for v in history], "horizon": 12}
    ).json()
    np.testing.assert_allclose(scaled["forecast"], [10 * v + 5000 for v in body["forecast"]], rtol=1e-4)
    # default horizon: the usual one of the model's own frequency
    full = _post(server, "/v1/forecast", {"history": history}).json()
    own = manifest.preprocessing["frequencies"][manifest.preprocessing["frequency"]]
    assert (
        full["horizon"] == own["horizon"] == len(full["quantiles"]["p90"]) and full["frequency"] == "hourly"
    )


def test_one_forecaster_serves_other_frequencies_and_lists_what_each_needs(server):
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models", timeout=30).json()["models"]}
    served = models["energy-demand"]["frequencies"]
    assert {"hourly", "daily", "monthly"} <= set(served) and served["monthly"]["min_history"] == 24
    months = np.arange(60)
    monthly = (100 + 0.5 * months + 10 * np.sin(2 * np.pi * months / 12)).round(2).tolist()
    r = _post(server, "/v1/forecast", {"history": monthly, "frequency": "monthly", "horizon": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["frequency"] == "monthly" and len(body["forecast"]) == 12
    assert all(np.isfinite(body["quantiles"][q]).all() for q in ("p10", "p50", "p90"))
    # every history length from each frequency's minimum up answers 200
    for name, spec in served.items():
        for n in (spec["min_history"], spec["min_history"] + 1, 600):
            series = (50 + 5 * np.sin(np.arange(n) / 3)).round(3).tolist()
            r = _post(server, "/v1/forecast", {"history": series, "frequency": name, "horizon": 1})
            assert r.status_code == 200, (name, n, r.text)


def test_forecast_interpolates_short_gaps_and_says_so(server):
    history = _series(1)[0]
    gappy = list(history)
    gappy[-10:-7] = [None, None, None]
    r = _post(server, "/v1/forecast", {"history": gappy, "horizon": 24})
    assert r.status_code == 200, r.text
    assert r.json()["interpolated"] == 3
    raw = json.dumps({"history": history}).replace(str(history[-1]), "NaN").encode()
    assert _post(server, "/v1/forecast", None, raw=raw).json()["interpolated"] == 1


def test_forecast_reads_known_covariates_and_does_without_them(server, tiny_repository):
    manifest = load_manifest(tiny_repository / "energy-demand")
    listed = manifest.preprocessing["covariates"]
    # the backtest scored the model with the covariates, with them as forecast, and without them
    assert {"fine_tuned", "with_forecast_covariates", "without_covariates"} <= set(
        manifest.metrics["backtest"]
    )
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models", timeout=30).json()["models"]}
    assert (
        set(models["energy-demand"]["covariates"])
        == {c["name"] for c in listed}
        == {"temperature_c", "holiday"}
    )
    city = city_load(hours=24 * 30, seed=5)
    n, horizon = 24 * 21, 24
    history = city["load_mw"][:n]
    covariates = {
        "temperature_c": city["temperature_c"][: n + horizon],
        "holiday": city["holiday"][: n + horizon],
    }
    plain = _post(server, "/v1/forecast", {"history": history, "horizon": horizon})
    given = _post(server, "/v1/forecast", {"history": history, "horizon": horizon, "covariates": covariates})
    assert plain.status_code == given.status_code == 200, given.text
    # the covariates move the forecast; one of them alone is read too
    assert given.json()["forecast"] != plain.json()["forecast"]
    only = {"temperature_c": covariates["temperature_c"]}
    one = _post(server, "/v1/forecast", {"history": history, "horizon": horizon, "covariates": only})
    assert one.status_code == 200 and one.json()["forecast"] not in (
        plain.json()["forecast"],
        given.json()["forecast"],
    )
    # a longer history is read at its end: the covariates align with it
    longer = _post(
        server,
        "/v1/forecast",
        {
            "history": city["load_mw"][: n + 48][-n:],
            "horizon": horizon,
            "covariates": {k: v[48 : n + 48 + horizon] for k, v in city.items() if k in covariates},
        },
    )
    assert longer.status_code == 200, longer.text


@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            {"history": [1.0] * 200, "covariates": {"temperature_c": [1.0] * 200}},
            400,
            "covariates.temperature_c: 200 values; expected 224 (one per history point, 200, then one per step ahead, 24)",
        ),
        (
            {"history": [1.0] * 200, "covariates": {"wind": [1.0] * 224}},
            400,
            "covariates: unknown ['wind']; this model reads ['temperature_c', 'holiday']",
        ),
        (
            {"history": [1.0] * 200, "covariates": {"holiday": [0] * 100 + ["x"] + [0] * 123}},
            400,
            "covariates.holiday[100]: expected a number or null, got str",
        ),
        (
            {"history": [1.0] * 200, "covariates": {"holiday": [0] * 100 + [None] * 5 + [0] * 119}},
            400,
            "covariates.holiday[100..104]: 5 missing points in a row",
        ),
        (
            {
                "history": [1.0] * 40,
                "frequency": "monthly",
                "horizon": 12,
                "covariates": {"holiday": [0] * 52},
            },
            400,
            "covariates: learned on hourly series",
        ),
        ({"history": [1.0] * 200, "covariates": [1.0] * 224}, 400, "covariates"),
        ({"history": [1.0] * 200, "covariates": {"holiday": 3}}, 400, "covariates"),
        (
            {"history": [1.0] * 100},
            400,
            "history: 100 points; the model needs at least 168 for hourly series",
        ),
        (
            {"history": [1.0] * 20, "frequency": "monthly"},
            400,
            "history: 20 points; the model needs at least 24 for monthly series",
        ),
        ({"history": [1.0] * 200, "frequency": "minutely"}, 400, "frequency: 'minutely' is not served"),
        ({"history": [1.0] * 200, "frequency": 12}, 400, "frequency"),
        ({"history": [1.0] * 200, "horizon": 49}, 400, "horizon: 49 is out of range"),
        ({"history": [1.0] * 200, "horizon": 0}, 400, "horizon: 0 is out of range"),
        ({"history": [1.0] * 200, "horizon": "24"}, 400, "horizon"),
        (
            {"history": [1.0] * 190 + [None] * 4 + [1.0] * 6},
            400,
            "history[190..193]: 4 missing points in a row",
        ),
        ({"history": [1.0] * 199 + ["12"]}, 400, "history[199]: expected a number or null, got str"),
        ({"history": [1.0] * 199 + [[1]]}, 400, "history[199]: expected a number or null, got list"),
        ({"history": []}, 400, "history"),
        ({"history": 5}, 400, "history"),
        ({"model": "credit-risk", "history": [1.0] * 200}, 400, "send it to /v1/tabular/predict"),
        ({"model": "nope", "history": [1.0] * 200}, 404, "unknown model"),
    ],
)
def test_bad_forecast_requests_get_4xx(server, body, status, message):
    r = _post(server, "/v1/forecast", body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_the_server_still_answers_after_bad_requests(server):
    assert _post(server, "/v1/forecast", {"history": _series(1)[0]}).status_code == 200
    assert _post(server, "/v1/tabular/predict", {"rows": _rows(2)}).status_code == 200
