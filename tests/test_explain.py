"""Table explanations and card-transaction features: the numpy parts against brute force, and a
tiny table model's explanations against the exact Shapley values of its (linear) log-odds."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from serving.errors import RequestError
from serving.processing.explain import FeatureColumns, ShapleySampler
from serving.processing.transactions import DERIVED, DeriveError, derive, velocity
from serving.runtime import Runtime
from serving.settings import Settings
from serving.tasks import TASKS
from serving.tasks.tabular import TabularRequest
from tests.test_task_contract import build_tabular

pytestmark = pytest.mark.fast  # in-process, no training, no server

FIELDS = {
    "card": "card_id",
    "time": "timestamp",
    "amount": "amount",
    "country": "country",
    "home_country": "home",
}


def brute_velocity(cards, seconds, amounts):
    out = {k: [] for k in ("txn_count_1h", "txn_count_24h", "amount_sum_1h", "amount_sum_24h")}
    for i in range(len(cards)):
        earlier = [
            j
            for j in range(len(cards))
            if cards[j] == cards[i] and (seconds[j] < seconds[i] or (seconds[j] == seconds[i] and j < i))
        ]
        for label, width in (("1h", 3600), ("24h", 86400)):
            inside = [j for j in earlier if seconds[i] - seconds[j] <= width]
            out[f"txn_count_{label}"].append(len(inside))
            out[f"amount_sum_{label}"].append(sum(amounts[j] for j in inside))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_velocity_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 120
    cards = rng.choice(["a", "b", "c", "d"], n)
    seconds = np.round(rng.uniform(0, 3 * 86400, n) / 600) * 600  # ties on purpose
    amounts = rng.uniform(1, 100, n).round(2)
    got = velocity(cards, seconds, amounts)
    want = brute_velocity(cards, seconds, amounts)
    for name, values in want.items():
        np.testing.assert_allclose(got[name], values, atol=1e-6, err_msg=name)


def test_derive_replaces_card_and_time_and_keeps_the_rest():
    rows = [
        {
            "card_id": "a",
            "timestamp": "2026-01-01T23:30:00+02:00",
            "amount": 10.0,
            "country": "FR",
            "home": "US",
            "x": 1,
        },
        {"card_id": 7, "timestamp": 1767312000, "amount": 5, "country": "US", "home": "US", "x": 2},
    ]
    a, b = derive(rows, FIELDS)
    assert "card_id" not in a and "timestamp" not in a and a["x"] == 1
    assert a["hour"] == 23.5 and a["foreign"] is True and b["foreign"] is False
    assert b["hour"] == (1767312000 % 86400) / 3600
    assert set(DERIVED) <= a.keys()


@pytest.mark.parametrize(
    "row, message",
    [
        ({"timestamp": "2026-01-01T00:00:00Z", "amount": 1.0}, "rows[0]: missing required field 'card_id'"),
        (
            {"card_id": "a", "timestamp": "yesterday", "amount": 1.0},
            "rows[0].timestamp: 'yesterday' is not an ISO 8601",
        ),
        (
            {"card_id": "a", "timestamp": 1.7e12, "amount": 1.0},
            "rows[0].timestamp: 1700000000000.0 is not epoch seconds",
        ),
        (
            {"card_id": "a", "timestamp": "2026-01-01", "amount": "12"},
            "rows[0].amount: expected a finite number",
        ),
        (
            {"card_id": "a", "timestamp": "2026-01-01", "amount": float("nan")},
            "rows[0].amount: expected a finite number",
        ),
        (
            {"card_id": ["a"], "timestamp": "2026-01-01", "amount": 1.0},
            "rows[0].card_id: expected a non-empty",
        ),
        (
            {"card_id": "a", "timestamp": "2026-01-01", "amount": 1.0, "txn_count_1h": 0},
            "computed by the server",
        ),
    ],
)
def test_derive_names_what_is_wrong(row, message):
    with pytest.raises(
        DeriveError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        derive([row], FIELDS)


def exact_shapley(f, x, background):
    """Interventional Shapley values by enumerating every coalition."""
    m = len(x)
    phi = np.zeros(m)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for size in range(m):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                with_j = background.copy()
                without = background.copy()
                for k in (*subset, j):
                    with_j[:, k] = x[k]
                for k in subset:
                    without[:, k] = x[k]
                phi[j] += weight * (f(with_j) - f(without)).mean()
    return phi


def test_sampled_shapley_is_additive_and_near_exact_on_an_interacting_model():
    rng = np.random.default_rng(0)
    m = 5
    features = [FeatureColumns(f"f{j}", (("numeric", j),)) for j in range(m)]
    background = {"numeric": rng.normal(size=(16, m)).astype(np.float32)}

    def f(a):
        a = a.astype(np.float64)
        return np.tanh(a[:, 0] * a[:, 1]) + a[:, 2] ** 2 - 0.5 * a[:, 3] + 0.1 * a[:, 4] * a[:, 0]

    x = {"numeric": rng.normal(size=(1, m)).astype(np.float32)}
    sampler = ShapleySampler(features, background, permutations=120)
    hybrids = sampler.hybrids(x)
    assert len(hybrids["numeric"]) == sampler.rows_per_explanation
    value = float(f(x["numeric"])[0])
    base, phi = sampler.contributions(value, f(background["numeric"]), f(hybrids["numeric"]))
    assert abs(base + phi.sum() - value) < 1e-9
    exact = exact_shapley(f, x["numeric"][0].astype(np.float64), background["numeric"].astype(np.float64))
    assert np.abs(phi - exact).max() < 0.05 * np.abs(exact).max(), (phi, exact)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Runtime:
    repo = tmp_path_factory.mktemp("repo")
    build_tabular(repo / "tabular")
    return Runtime(Settings(repository=repo, device="cpu", threads=1, cache=repo / "cache"))


def test_explanations_of_a_linear_model_are_its_exact_shapley_values(tiny: Runtime):
    """The tiny model's log-odds are linear in the encoded columns, so each feature's Shapley value is
    its weight times (its value minus the background's mean), whatever orderings are sampled."""
    model = tiny.models["tabular"]
    task = model.task
    rows = [s.json["rows"][0] for s in TASKS["tabular-classification"].samples(20)][8:12]
    answer = task.predict(TabularRequest(model="tabular", rows=rows, explain=True))
    graph = onnx.load(str(Path(model.directory) / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    w_numeric = weights["wn"][:, 1] - weights["wn"][:, 0]
    w_codes = weights["wc"][:, 1] - weights["wc"][:, 0]
    encoder = task.encoder
    background = encoder.encode_all(task.manifest.preprocessing["background"])
    for row, prediction in zip(rows, answer["predictions"]):
        explanation = prediction["explanation"]
        assert explanation["space"] == "log_odds" and explanation["label"] == "default"
        contributions = explanation["contributions"]
        assert abs(explanation["base"] + sum(contributions.values()) - explanation["value"]) < 1e-4
        encoded = encoder.encode([row])
        (logits,) = task.session.run(None, encoded)
        assert explanation["value"] == pytest.approx(float(logits[0, 1]) - float(logits[0, 0]), rel=1e-5)
        for feature in encoder.feature_columns():
            want = 0.0
            for name, column in feature.columns:
                w = (w_numeric if name == "numeric" else w_codes)[column]
                want += w * (encoded[name][0, column] - background[name][:, column].mean())
            # float32 logits: rounding is relative to the size of the terms summed
            scale = (
                abs(explanation["value"]) + abs(explanation["base"]) + sum(map(abs, contributions.values()))
            )
            assert contributions[feature.name] == pytest.approx(want, abs=1e-5 + 2e-6 * scale), feature.name
        magnitudes = [abs(v) for v in contributions.values()]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_explain_limits_and_models_without_a_background(tiny: Runtime, tmp_path: Path):
    task = tiny.models["tabular"].task
    rows = [s.json["rows"][0] for s in TASKS["tabular-classification"].samples(17)]
    with pytest.raises(RequestError, match="at most 16 per request") as caught:
        task.predict(TabularRequest(model="tabular", rows=rows, explain=True))
    assert caught.value.status == 413
    assert "explanation" not in task.predict(TabularRequest(model="tabular", rows=rows))["predictions"][0]

    build_tabular(tmp_path / "old")
    import json

    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["preprocessing"]["background"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    old = Runtime(Settings(repository=tmp_path, device="cpu", threads=1, cache=tmp_path / "cache"))
    with pytest.raises(RequestError, match="no background sample"):
        old.models["old"].task.predict(TabularRequest(model="old", rows=rows[:1], explain=True))
