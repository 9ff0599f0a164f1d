"""Tables: schema inference, row validation, calibration, the credit generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.processing.tabular import (
    MISSING,
    UNKNOWN,
    RowEncoder,
    RowError,
    fit_feature,
    infer_kinds,
    parse_cell,
)
from training.data.tables import generate_credit_applications, read_csv_columns, write_csv
from training.tasks.tabular_classification import binary_metrics, choose_threshold, fit_temperature


def test_infer_kinds_from_csv_text():
    n = 40
    columns = {
        "age": [str(20 + i) for i in range(n)],
        "smoker": ["yes" if i % 3 else "no" for i in range(n)],
        "flag01": [str(i % 2) for i in range(n)],
        "city": [["paris", "lyon", "nice"][i % 3] for i in range(n)],
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "income": [None if i % 7 == 0 else str(1000.5 * i) for i in range(n)],
        "empty": [None] * n,
    }
    kinds = infer_kinds(columns)
    assert kinds == {
        "age": "numeric",
        "smoker": "boolean",
        "flag01": "boolean",
        "city": "categorical",
        "customer_id": None,
        "income": "numeric",
        "empty": None,
    }
    assert parse_cell("boolean", "Yes") is True and parse_cell("boolean", "0") is False
    assert (
        parse_cell("numeric", " 3.5 ") == 3.5
        and parse_cell("numeric", "") is None
        and parse_cell("categorical", "NA") is None
    )


def _encoder() -> RowEncoder:
    return RowEncoder(
        [
            fit_feature("age", "numeric", [20.0, 30.0, 40.0]),
            fit_feature("income", "numeric", [100.0, None, 300.0]),  # had gaps → imputed with an indicator
            fit_feature("student", "boolean", [True, False, False]),
            fit_feature("city", "categorical", ["paris", "lyon", "paris"]),
            fit_feature("plan", "categorical", ["a", None, "b"]),
        ],
        max_rows=10,
    )


def test_fit_feature_statistics_and_policies():
    enc = _encoder()
    age, income, student, city, plan = enc.features
    assert (
        age.missing == "error"
        and age.mean == pytest.approx(30.0)
        and age.std == pytest.approx(math.sqrt(200 / 3))
    )
    assert income.missing == "impute" and income.fill == pytest.approx(200.0)
    assert student.fill == pytest.approx(1 / 3)
    assert city.vocabulary == [UNKNOWN, "lyon", "paris"] and plan.vocabulary == [UNKNOWN, MISSING, "a", "b"]
    assert (
        enc.input_names == ["numeric", "categorical"]
        and enc.numeric_width == 4
        and enc.cardinalities == [3, 4]
    )


def test_encode_valid_rows_standardises_imputes_and_buckets_unseen_categories():
    enc = _encoder()
    out = enc.encode(
        [
            {"age": 30, "income": 300.0, "student": True, "city": "lyon", "plan": "b"},
            {"age": 40.0, "income": None, "student": 0, "city": "tokyo", "plan": None},
            {"age": 20, "student": False, "city": "paris"},  # imputed features may be absent
        ]
    )
    num, cat = out["numeric"], out["categorical"]
    assert num.dtype == np.float32 and cat.dtype == np.int64 and num.shape == (3, 4) and cat.shape == (3, 2)
    assert num[0, 0] == pytest.approx(0.0) and num[1, 0] == pytest.approx(10 / math.sqrt(200 / 3), rel=1e-5)
    assert (
        num[1, 1] == pytest.approx((200 - 200) / 100) and num[1, 3] == 1.0 and num[0, 3] == 0.0
    )  # indicator
    assert num[2, 3] == 1.0
    assert cat[:, 0].tolist() == [1, 0, 2]  # tokyo → <unknown>
    assert cat[:, 1].tolist() == [3, 1, 1]  # null and absent → <missing>


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"income": 1.0, "student": True, "city": "x"}], "rows[0]: missing required feature(s) ['age']"),
        (
            [{"age": 1, "student": True, "city": "x", "colour": "red"}],
            "rows[0]: unknown feature(s) ['colour']",
        ),
        (
            [{"age": 1, "student": True, "city": "x"}, {"age": "41", "student": True, "city": "x"}],
            "rows[1].age: expected a number, got string '41'",
        ),
        ([{"age": True, "student": True, "city": "x"}], "rows[0].age: expected a number, got boolean"),
        ([{"age": float("nan"), "student": True, "city": "x"}], "rows[0].age: NaN is not allowed"),
        ([{"age": None, "student": True, "city": "x"}], "rows[0].age: null is not allowed"),
        ([{"age": float("inf"), "student": True, "city": "x"}], "rows[0].age: inf is not a finite number"),
        ([{"age": 10**400, "student": True, "city": "x"}], "rows[0].age: integer out of range"),
        ([{"age": 1e300, "student": True, "city": "x"}], "rows[0].age: 1e+300 is out of range"),
        ([{"age": 1, "student": "yes", "city": "x"}], "rows[0].student: expected true or false"),
        ([{"age": 1, "student": True, "city": 2.5}], "rows[0].city: expected a string category"),
        ([{"age": 1, "student": True, "city": ["x"]}], "rows[0].city: expected a string category, got array"),
        ([[1, 2]], "rows[0]: expected an object"),
        ([], "rows: empty"),
        ([{"age": 1, "student": True, "city": "x"}] * 11, "rows: 11 rows; at most 10"),
    ],
)
def test_bad_rows_name_row_and_column(rows, message):
    with pytest.raises(RowError) as err:
        _encoder().encode(rows)
    assert message in str(err.value)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 3))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    targets = np.array([rng.choice(3, p=p) for p in probs])
    # an over-confident model: logits 2.5× too large
    assert fit_temperature(true_logits * 2.5, targets) == pytest.approx(2.5, rel=0.1)


def test_threshold_objectives_and_binary_metrics():
    rng = np.random.default_rng(1)
    positive = rng.random(2000) < 0.1
    scores = np.clip(0.1 + 0.5 * positive + rng.normal(0, 0.15, 2000), 0, 1)
    f1_cut = choose_threshold(scores, positive, "f1")
    acc_cut = choose_threshold(scores, positive, "accuracy")
    assert 0.2 < f1_cut < 0.6 and 0.2 < acc_cut < 0.7
    m = binary_metrics(scores, positive, f1_cut)
    assert m["roc_auc"] > 0.95 and 0 < m["brier"] < 0.1 and m["f1"] > 0.7 and m["n"] == 2000


def test_credit_generator_is_deterministic_realistic_and_round_trips_csv(tmp_path):
    a, b = generate_credit_applications(3000, seed=4), generate_credit_applications(3000, seed=4)
    assert a == b
    rate = np.mean([d == "yes" for d in a["default"]])
    assert 0.07 < rate < 0.13
    assert 21 <= min(a["age"]) and max(a["age"]) <= 75
    assert all(h <= age - 18 for h, age in zip(a["credit_history_years"], a["age"]))
    assert 0.01 < np.mean([v is None for v in a["annual_income"]]) < 0.06
    columns = read_csv_columns(write_csv(tmp_path / "apps.csv", a))
    assert list(columns) == list(a) and len(columns["age"]) == 3000
    kinds = infer_kinds({k: v for k, v in columns.items() if k != "default"})
    assert (
        kinds["employment"] == "categorical"
        and kinds["has_cosigner"] == "boolean"
        and kinds["annual_income"] == "numeric"
    )
    # defaults rise with debt-to-income: the hidden risk function is visible in the data
    dti = np.array(a["debt_to_income"])
    default = np.array([d == "yes" for d in a["default"]])
    assert default[dti > np.quantile(dti, 0.8)].mean() > 1.5 * default[dti < np.quantile(dti, 0.2)].mean()


def test_built_manifests_record_baseline_calibration_and_backtest(tiny_repository):
    from serving.manifest import load_manifest

    for name in ("credit-risk", "diagnosis"):
        m = load_manifest(tiny_repository / name)
        assert m.task == "tabular-classification" and m.metrics["decisive"] == "roc_auc"
        for side in (
            m.variants[m.default_variant["cpu"]].metrics,
            m.metrics["baseline_hist_gradient_boosting"],
        ):
            assert {"roc_auc", "pr_auc", "brier", "accuracy"} <= set(side)
        cal = m.metrics["calibration"]
        assert (
            cal["temperature"] > 0
            and 0 < cal["threshold"] < 1
            and m.preprocessing["threshold"] == cal["threshold"]
        )
        assert (
            cal["val_log_loss_after"] <= cal["val_log_loss_before"] + 1e-9
        )  # temperature never hurts validation NLL
    m = load_manifest(tiny_repository / "energy-demand")
    backtest = m.metrics["backtest"]
    assert {"fine_tuned", "pretrained_only", "seasonal_naive"} <= set(backtest) and backtest["origins"] > 10
    assert 0 <= backtest["fine_tuned"]["coverage_p10_p90"] <= 1 and m.labels == ["p10", "p50", "p90"]
    tuned = backtest["fine_tuned"]
    assert 0 < tuned["mase_standard_error"] < tuned["mase"]


def test_train_a_users_csv_with_target_flag(tmp_path):
    """`tuneserve train credit-risk --data apps.csv --target outcome`: the schema comes from the file."""
    from serving.manifest import load_manifest
    from training.cli import main

    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(0, 1, n)
    colour = rng.choice(["red", "green", "blue"], n)
    outcome = np.where(x + (colour == "red") + rng.normal(0, 0.5, n) > 0.8, "bad", "good")
    write_csv(
        tmp_path / "apps.csv",
        {
            "score": x.round(3).tolist(),
            "colour": colour.tolist(),
            "id": [f"A{i}" for i in range(n)],
            "outcome": outcome.tolist(),
        },
    )
    code = main(
        [
            "train",
            "credit-risk",
            "--data",
            str(tmp_path / "apps.csv"),
            "--target",
            "outcome",
            "--epochs",
            "3",
            "--no-gate",
            "--repository",
            str(tmp_path / "repo"),
        ]
    )
    assert code == 0
    m = load_manifest(tmp_path / "repo" / "credit-risk")
    assert [f["name"] for f in m.preprocessing["features"]] == [
        "score",
        "colour",
    ]  # the identifier column is left out
    assert m.labels == ["bad", "good"] and m.variants["fp32"].metrics["roc_auc"] > 0.8


def test_implausible_numbers_are_refused_beyond_a_multiple_of_the_training_range():
    radius = fit_feature("radius", "numeric", [7.0, 12.0, 28.0])
    assert (radius.low, radius.high) == (7.0, 28.0)
    flag = fit_feature("flag", "boolean", [True, False])
    encoder = RowEncoder([radius, flag], range_factor=10)
    ok = encoder.encode([{"radius": 28.0 + 9 * 21, "flag": True}, {"radius": 7.0 - 9 * 21, "flag": False}])
    assert ok["numeric"].shape == (2, 2)
    with pytest.raises(RowError, match=r"rows\[1\]\.radius: 1e\+30 is implausible: training saw 7 to 28"):
        encoder.encode([{"radius": 10.0, "flag": True}, {"radius": 1e30, "flag": True}])
    with pytest.raises(RowError, match=r"rows\[0\]\.radius: -204 is implausible"):
        encoder.encode([{"radius": -204, "flag": True}])
    # no check without a factor (training encodes its own data) or without a recorded range
    assert RowEncoder([radius, flag]).encode([{"radius": 1e29, "flag": True}])["numeric"].shape == (1, 2)
    older = RowEncoder.from_config(
        {"features": [{"name": "radius", "kind": "numeric", "mean": 15.0, "std": 5.0}]}, range_factor=10
    )
    assert older.encode([{"radius": 1e29}])["numeric"].shape == (1, 1)
    # a feature that was constant in training still accepts values around it
    constant = fit_feature("c", "numeric", [3.0, 3.0])
    assert RowEncoder([constant], range_factor=10).encode([{"c": 12.0}])["numeric"].shape == (1, 1)
