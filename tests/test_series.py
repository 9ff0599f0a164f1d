"""Series: history validation and gap filling, scaling, CSV reading, the generators."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from serving.errors import InputError
from serving.processing.series import (
    COVARIATE_FEATURES,
    FREQUENCIES,
    LAG_FEATURES,
    Covariate,
    SeriesError,
    clean_history,
    covariate_features,
    frequency_named,
    robust_scale,
    series_features,
    standardise,
)
from training.data.series import (
    HELDOUT_FAMILIES,
    PRETRAIN_FAMILIES,
    city_load,
    corpus,
    read_series_csv,
    read_series_table,
    synthetic_corpus,
)
from training.tasks.forecasting import CANDIDATES, WEEK, candidates, seasonal_profile, windows


def test_short_gaps_are_interpolated_and_counted():
    history = [float(i) for i in range(200)]
    history[190:193] = [None, float("nan"), None]
    history[199] = None  # trailing gap: nearest value
    values, n = clean_history(history, window=168)
    assert n == 4 and len(values) == 168
    assert values[190 - 32 : 193 - 32].tolist() == [190.0, 191.0, 192.0]
    assert values[-1] == 198.0


@pytest.mark.parametrize(
    "history, message",
    [
        ([1.0] * 100, "history: 100 points; the model needs at least 168"),
        ([1.0] * 196 + [None] * 4, "history[196..199]: 4 missing points in a row; at most 3"),
        ([1.0] * 199 + ["12"], "history[199]: expected a number or null, got str"),
        (["x"] + [1.0] * 199, "history[0]: expected a number or null"),
        ([True] + [1.0] * 199, "history[0]: expected a number or null, got bool"),
        ([1.0] * 199 + [float("inf")], "history[199]: inf is not a usable number"),
        ([1.0] * 199 + [10**400], "history[199]: integer out of range"),
        ({"a": 1}, "history: expected an array"),
        ([None] * 200, "all missing"),
    ],
)
def test_bad_histories_are_refused_with_position(history, message):
    with pytest.raises(SeriesError) as err:
        clean_history(history, window=168)
    assert message in str(err.value)


def test_standardise_maps_back_exactly_and_survives_constant_series():
    x = np.linspace(100, 200, 168)
    z, loc, scale = standardise(x)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    np.testing.assert_allclose(z * scale + loc, x, rtol=1e-6)
    z, loc, scale = standardise(np.full((2, 168), 7.0))
    assert np.isfinite(z).all() and (z == 0).all() and (loc[:, 0] == 7.0).all()


def test_windows_targets_are_the_future_and_its_seasonal_naive_forecast():
    series = np.arange(2000, dtype=np.float64) % 168 * 3 + 10  # exactly weekly-periodic
    hourly = FREQUENCIES["hourly"]
    examples, loc, scale = windows(series, np.array([600, 900]), hourly, 512, 48)
    truth, naive = examples.targets["future"], examples.targets["naive"]
    np.testing.assert_allclose(
        truth * scale[:, None] + loc[:, None], series[[[t] for t in (600, 900)] + np.arange(48)], rtol=1e-5
    )
    np.testing.assert_allclose(truth, naive, atol=1e-5)  # seasonal-naive is perfect on a weekly cycle
    h = examples.inputs["history"][0]
    np.testing.assert_allclose(h * scale[0] + loc[0], series[600 - 512 : 600], rtol=1e-5)
    assert (examples.inputs["observed"] == 1).all() and (examples.targets["weight"] > 0).all()
    # a forecast origin near the end: the steps past the series weigh nothing
    tail, _, _ = windows(series, np.array([1990]), hourly, 512, 48)
    assert (tail.targets["weight"][0, :10] > 0).all() and (tail.targets["weight"][0, 10:] == 0).all()


def test_seasonal_lags_are_the_same_phase_of_earlier_seasons_and_short_histories_are_flagged():
    monthly = FREQUENCIES["monthly"]
    values = np.arange(30, dtype=np.float64)  # 30 months: two and a half years
    history, observed, lags, loc, scale = series_features(values, monthly, 512, 18)
    assert history.shape == observed.shape == (512,) and lags.shape == (18, LAG_FEATURES)
    assert observed.sum() == 30 and (history[:-30] == 0).all()
    back = lags * scale + loc
    # step h, j seasons back: index 30 - 12 j + h % 12
    np.testing.assert_allclose(back[:, 0], 30 - 12 + np.arange(18) % 12, rtol=1e-5)
    np.testing.assert_allclose(back[:, 2], 30 - 24 + np.arange(18) % 12, rtol=1e-5)
    # three years back reaches into the history only for the phases from month 6 on
    reached = (30 - 36 + np.arange(18) % 12) >= 0
    np.testing.assert_array_equal(lags[:, 5], reached)
    assert (lags[~reached, 4] == 0).all()
    assert (lags[:, 1] == 1).all() and (lags[:, 3] == 1).all()


def test_covariate_features_read_the_step_its_seasonal_lags_and_the_recent_level():
    hourly = FREQUENCIES["hourly"]  # periods (168, 24)
    n, horizon = 600, 30
    known = [Covariate("t", 100.0, 20.0), Covariate("h", 0.0, 1.0)]
    row = np.arange(n + horizon, dtype=np.float64)  # the covariate is its own index
    out = covariate_features([row, None], known, hourly, n, horizon, scale=4.0, reference_scale=8.0)
    assert out.shape == (horizon, 2 * COVARIATE_FEATURES + 1)
    back = out[:, :COVARIATE_FEATURES] * 20.0 + 100.0
    steps = np.arange(horizon)
    np.testing.assert_allclose(back[:, 0], n + steps)  # the value at the step
    # then as seasonal_lags reads the history: a week back 1..3 times, then a day back 1..3 times
    for j, (period, season) in enumerate([(168, 1), (168, 2), (168, 3), (24, 1), (24, 2), (24, 3)]):
        np.testing.assert_allclose(back[:, 1 + j], n - season * period + steps % period)
    np.testing.assert_allclose(back[:, 7], np.arange(n - 24, n).mean())  # the recent level's window
    assert (out[:, 8] == 1).all()  # given
    assert (out[:, COVARIATE_FEATURES:-1] == 0).all()  # the second was left out
    assert (out[:, -1] == 2.0).all()  # the recipe's scale over this window's
    # a short history: lags it does not reach read 0; steps beyond those given repeat the last
    short = covariate_features([row[: 200 + 5], None], known, hourly, 200, horizon, 4.0, 8.0)
    assert (short[:, 3] == 0).all() and (short[5:, 0] == short[4, 0]).all()


def test_robust_scale_ignores_a_level_shift_long_before_the_origin():
    rng = np.random.default_rng(0)
    hourly = FREQUENCIES["hourly"]
    base = 100 + 10 * np.sin(np.arange(600) * 2 * np.pi / 24) + rng.normal(0, 1, 600)
    shifted = base.copy()
    shifted[:200] += 500  # a level shift 400 hours ago
    assert robust_scale(shifted, hourly)[0] == pytest.approx(robust_scale(base, hourly)[0])
    assert robust_scale(shifted, hourly)[1] == pytest.approx(robust_scale(base, hourly)[1], rel=0.3)
    # a constant history: a finite, positive scale
    loc, scale = robust_scale(np.full(200, 7.0), hourly)
    assert loc == 7.0 and 0 < scale < 1e-3


def test_frequencies_are_named_or_refused_with_the_list():
    served = {"hourly": {}, "monthly": {}}
    assert frequency_named(None, "hourly", served).name == "hourly"
    assert frequency_named("monthly", "hourly", served).periods == (12, 12)
    with pytest.raises(SeriesError, match="'daily' is not served by this model; it serves hourly, monthly"):
        frequency_named("daily", "hourly", served)
    # the manifest's description wins over this code's defaults (a model keeps what it was trained with)
    trained = {"monthly": {"periods": [12, 6], "min_history": 30, "horizon": 12, "reach": 96}}
    assert frequency_named("monthly", "monthly", trained) == FREQUENCIES["monthly"].__class__(
        "monthly", (12, 6), 30, 12, 96
    )
    custom = {"minutely": {"periods": [60, 60], "min_history": 120, "horizon": 30, "reach": 480}}
    assert frequency_named(None, "minutely", custom).periods == (60, 60)
    with pytest.raises(SeriesError, match="history: 10 points; the model needs at least 24 for monthly"):
        clean_history([1.0] * 10, 512, minimum=24, series="monthly")
    values, _ = clean_history([1.0] * 30, 512, minimum=24)
    assert len(values) == 30


def test_generator_families_cover_every_frequency_and_are_deterministic():
    series = corpus(60, seed=4)
    assert {f for _, f, _ in series} == set(FREQUENCIES)
    assert {fam for fam, _, _ in series} == set(PRETRAIN_FAMILIES)
    assert all(np.isfinite(v).all() and len(v) >= FREQUENCIES[f].min_history + 10 for _, f, v in series)
    np.testing.assert_array_equal(series[7][2], corpus(60, seed=4)[7][2])
    assert not set(PRETRAIN_FAMILIES) & set(HELDOUT_FAMILIES)
    rng = np.random.default_rng(1)
    for family in HELDOUT_FAMILIES.values():
        for frequency in FREQUENCIES:
            assert np.isfinite(family(rng, 200, frequency)).all()


def test_read_series_csv_fills_short_gaps_and_refuses_long_ones(tmp_path):
    rows = ["timestamp,value"] + [f"2024-01-01T{h:02d}:00:00,{h * 10}" for h in range(24) if h not in (5, 6)]
    rows.insert(3, "2024-01-01T02:00:00,")  # a duplicate hour with an empty value overrides
    path = tmp_path / "s.csv"
    path.write_text("\n".join(rows) + "\n")
    series = read_series_csv(path)
    assert len(series) == 24 and series[5] == pytest.approx(50) and series[6] == pytest.approx(60)
    long_gap = ["timestamp,value"] + [f"2024-01-01T{h:02d}:00:00,{h}" for h in range(24) if not 5 <= h <= 10]
    path.write_text("\n".join(long_gap) + "\n")
    with pytest.raises(ValueError, match="a gap of 6 hours"):
        read_series_csv(path)


def test_read_series_table_reads_covariates_beside_the_series_and_names_their_gaps(tmp_path):
    rows = ["timestamp,load,temp"] + [f"2024-01-01T{h:02d}:00:00,{h},{20 + h}" for h in range(24)]
    rows[4] = "2024-01-01T03:00:00,3,"  # a short gap in the covariate
    path = tmp_path / "s.csv"
    path.write_text("\n".join(rows) + "\n")
    table = read_series_table(path, ["load", "temp"])
    assert table.shape == (2, 24) and table[1, 3] == pytest.approx(23) and table[0, 3] == 3
    rows[5:12] = [f"2024-01-01T{h:02d}:00:00,{h}," for h in range(4, 11)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="a gap of 8 hours in temp"):
        read_series_table(path, ["load", "temp"])
    with pytest.raises(ValueError, match="lacks column"):
        read_series_table(path, ["load", "wind"])


def _csv(tmp_path, stamps, values):
    path = tmp_path / "s.csv"
    path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in zip(stamps, values)))
    return path


def test_read_series_csv_reads_every_frequency_and_refuses_the_wrong_one(tmp_path):
    months = [f"{2000 + i // 12}-{i % 12 + 1:02d}-01" for i in range(36) if i != 7]  # August 2000 missing
    path = _csv(tmp_path, months, [float(i) for i in range(36) if i != 7])
    series = read_series_csv(path, frequency="monthly")
    assert len(series) == 36 and series[7] == pytest.approx(7.0)
    with pytest.raises(ValueError, match=r"spaced like a monthly series.*--frequency monthly"):
        read_series_csv(path)  # hourly by default
    sundays = [(dt.date(2024, 1, 7) + dt.timedelta(weeks=i)).isoformat() for i in range(60)]
    assert len(read_series_csv(_csv(tmp_path, sundays, range(60)), frequency="weekly")) == 60
    years = [f"{1900 + i}-07-01" for i in range(30)]
    assert read_series_csv(_csv(tmp_path, years, range(30)), frequency="yearly")[-1] == 29
    quarters = [f"{2000 + i // 4}-{3 * (i % 4) + 1:02d}-15" for i in range(20) if i not in (4, 5, 6, 7, 8)]
    with pytest.raises(ValueError, match="a gap of 5 quarters"):
        read_series_csv(_csv(tmp_path, quarters, range(15)), frequency="quarterly")
    # hours in UTC: the autumn DST change repeats no hour and leaves no gap
    start = dt.datetime(2024, 10, 27, 0, tzinfo=dt.UTC)
    stamps = [
        (start + dt.timedelta(hours=h)).astimezone(dt.timezone(dt.timedelta(hours=2 if h < 1 else 1)))
        for h in range(6)
    ]
    assert len(read_series_csv(_csv(tmp_path, [s.isoformat() for s in stamps], range(6)))) == 6
    minutes = [f"2024-01-01T00:{m:02d}:00" for m in range(0, 60, 5)]
    with pytest.raises(ValueError, match="no frequency served"):
        read_series_csv(_csv(tmp_path, minutes, range(12)))


def test_forecasting_splits_a_short_monthly_series_without_leaking_the_future(tmp_path):
    from training.backbones import get_backbone
    from training.recipe import load_recipe
    from training.tasks.forecasting import ForecastingTask

    months = [f"{1949 + i // 12}-{i % 12 + 1:02d}-01" for i in range(144)]
    values = 100 + 10 * np.sin(np.arange(144) * 2 * np.pi / 12) + np.arange(144)
    path = _csv(tmp_path, months, values)
    recipe = load_recipe("energy-demand").with_overrides(
        {"data.source": str(path), "preprocessing.frequency": "monthly"}
    )
    task = ForecastingTask(recipe, get_backbone(recipe.backbone))
    splits = task.load_data()
    horizon = FREQUENCIES["monthly"].horizon
    assert len(splits.test) >= 3 and len(splits.val) >= 3 and len(splits.train) >= 10
    assert task.strides() == (horizon, 1, 1)
    # a training window's known future ends where validation begins: the last origin sees horizon steps
    last = splits.train.targets["weight"][-1]
    assert (last[:horizon] > 0).all() and (last[horizon:] == 0).all()
    assert task.preprocessing_config()["frequency"] == "monthly"
    short = _csv(tmp_path, months[:40], values[:40])
    task = ForecastingTask(recipe.with_overrides({"data.source": str(short)}), get_backbone(recipe.backbone))
    with pytest.raises(ValueError, match="40 months is too short"):
        task.load_data()


def test_generators_are_deterministic_and_shaped_like_load():
    corpus = synthetic_corpus(5, 500, seed=1)
    assert len(corpus) == 5 and all(len(s) == 500 and (s > 0).all() for s in corpus)
    np.testing.assert_array_equal(corpus[0], synthetic_corpus(5, 500, seed=1)[0])
    city = city_load(hours=24 * 7 * 60, seed=3)
    load, temp = np.array(city["load_mw"]), np.array(city["temperature_c"])
    assert 500 < load.mean() < 2000
    # temperature-driven: cold days draw more than mild days
    daily_load, daily_temp = load.reshape(-1, 24).mean(1), temp.reshape(-1, 24).mean(1)
    assert daily_load[daily_temp < 5].mean() > daily_load[(daily_temp > 14) & (daily_temp < 20)].mean()
    # daily and weekly seasonality: a week back predicts the hour well, though weather moves it
    assert np.corrcoef(load[WEEK:], load[:-WEEK])[0, 1] > 0.6


def test_forecast_parity_is_a_tolerance_not_an_argmax():
    from training.backbones import get_backbone
    from training.recipe import load_recipe
    from training.tasks.forecasting import ForecastingTask
    from training.tasks.text_classification import TextClassificationTask

    recipe = load_recipe("energy-demand")
    task = ForecastingTask(recipe, get_backbone(recipe.backbone))
    reference = np.zeros((4, 24, 3), dtype=np.float32)
    reference[..., 1] = 1e-6  # the median edges out the other quantiles by less than the tolerance
    close = reference + np.float32(2e-6) * (
        np.arange(3) == 0
    )  # ... and an engine's rounding flips the argmax
    report = task.parity(reference, close)
    assert set(report) == {"max_abs_diff"} and task.parity_problem(report, atol=1e-4) is None
    assert "limit" in task.parity_problem(task.parity(reference, reference + 1e-3), atol=1e-4)
    # a classifier with the same numbers fails: its served answer (the argmax) changed
    text = load_recipe("intent")
    classifier = TextClassificationTask(text, get_backbone(text.backbone))
    assert classifier.parity_problem(classifier.parity(reference, close), atol=1e-4) == "the argmax differs"


@pytest.mark.parametrize("name,length", [("monthly", 100), ("daily", 40), ("yearly", 30), ("hourly", 700)])
def test_seasonal_profile_is_the_mean_of_every_season_in_the_context(name, length):
    import torch

    frequency = FREQUENCIES[name]
    values = 50 + np.random.default_rng(1).normal(0, 5, length) + np.arange(length) * 0.3
    history, observed, lags, _, _ = series_features(values, frequency, 512, 20)
    tensors = [torch.from_numpy(x)[None] for x in (history, observed, lags)]
    profile, adjusted = (x[0].numpy() for x in seasonal_profile(*tensors))
    scaled = history[observed > 0]
    n, p = len(scaled), frequency.periods[0]
    expected = np.array([scaled[[i for i in range(n) if (i - n) % p == h % p]].mean() for h in range(20)])
    np.testing.assert_allclose(profile, expected, atol=1e-5)
    np.testing.assert_allclose(adjusted, expected + scaled[-p:].mean() - scaled.mean(), atol=1e-5)
    assert candidates(*tensors).shape == (1, 20, CANDIDATES)


@pytest.mark.fast
def test_combination_weighs_the_network_by_its_error_on_the_last_windows():
    from serving.processing.series import combination_weight, validation_origins

    daily = FREQUENCIES["daily"]
    rng = np.random.default_rng(0)
    values = 100 + 10 * np.sin(2 * np.pi * np.arange(120) / 7) + rng.normal(0, 1, 120)
    origins = validation_origins(len(values), daily, 14)
    assert origins == [106, 92, 78, 64]
    truth = [values[o : o + 14] for o in origins]
    naive = [values[o - 7 + np.arange(14) % 7] for o in origins]
    assert combination_weight(values, origins, truth, daily, 14) == 1.0  # the network was right
    assert combination_weight(values, origins, [t + 100 for t in truth], daily, 14) < 1e-4
    # as far off as repeating the last week: half each
    off = [t + np.abs(n - t).mean() for t, n in zip(truth, naive)]
    assert combination_weight(values, origins, off, daily, 14) == pytest.approx(0.5, abs=0.02)
    # a history too short to hold a window before its last horizon: the network alone
    assert (
        validation_origins(35, daily, 14) == [] and combination_weight(values[:35], [], [], daily, 14) == 1.0
    )


@pytest.mark.fast
def test_seasonal_naive_quantiles_stay_ordered_on_a_trending_series():
    from serving.processing.series import combine, seasonal_naive

    levels = np.array([0.1, 0.5, 0.9])
    trend = np.arange(60, dtype=float) * 3.0  # every seasonal error is +21: all of one sign
    naive = seasonal_naive(trend, 7, 10, levels)
    assert (naive[:, 0] <= naive[:, 1]).all() and (naive[:, 1] <= naive[:, 2]).all()
    np.testing.assert_array_equal(naive[:, 1], trend[53 + np.arange(10) % 7])
    network = np.stack([naive[:, 1] + d for d in (-5.0, 10.0, 20.0)], axis=1)
    np.testing.assert_array_equal(combine(network, trend, FREQUENCIES["daily"], 1.0, levels), network)
    np.testing.assert_allclose(combine(network, trend, FREQUENCIES["daily"], 0.0, levels), naive)
    half = combine(network, trend, FREQUENCIES["daily"], 0.5, levels)
    np.testing.assert_allclose(half, (network + naive) / 2)
    # shorter than one season (a manifest may list such a frequency): nothing to repeat
    np.testing.assert_array_equal(combine(network, trend[:5], FREQUENCIES["daily"], 0.0, levels), network)


@pytest.mark.fast
def test_served_forecast_follows_seasonal_naive_where_the_network_missed_the_season(tmp_path):
    """A network that forecasts the recent level flat, on a series that repeats its week exactly:
    on the history's last windows repeating the week had no error, so the served forecast is the
    week repeated; with the combination off it is the network's flat line."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from serving.processing.series import manifest_frequencies
    from serving.settings import Settings
    from serving.tasks.forecasting import Forecasting, ForecastRequest
    from tests.conftest import series_manifest

    window, horizon = 64, 24
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["lags", "axes"], ["total"], keepdims=1),
            helper.make_node("Mul", ["total", "zero"], ["flat"]),
            helper.make_node("Add", ["flat", "spread"], ["quantiles"]),
        ],
        "flat",
        [
            helper.make_tensor_value_info("history", TensorProto.FLOAT, ["batch", window]),
            helper.make_tensor_value_info("observed", TensorProto.FLOAT, ["batch", window]),
            helper.make_tensor_value_info("lags", TensorProto.FLOAT, ["batch", horizon, LAG_FEATURES]),
        ],
        [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, ["batch", horizon, 3])],
        [
            numpy_helper.from_array(np.array([2], np.int64), "axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array([-1.0, 0.0, 1.0], np.float32), "spread"),
        ],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        tmp_path / "m.onnx",
    )
    manifest = series_manifest(
        "flat",
        window,
        horizon,
        {
            "kind": "series",
            "window": window,
            "horizon": horizon,
            "quantiles": [0.1, 0.5, 0.9],
            "frequency": "daily",
            "frequencies": manifest_frequencies(),
        },
        fp32="m.onnx",
    )
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    task = Forecasting(tmp_path, manifest, session, Settings())
    week = [50.0, 80.0, 95.0, 90.0, 85.0, 30.0, 20.0]
    history = week * 12

    def forecast() -> np.ndarray:
        request = ForecastRequest(history=history, frequency="daily")
        prepared = task.prepare(request)
        return np.array(task.answer(request, prepared, task.run(task.items(prepared)))["forecast"])

    served = forecast()
    np.testing.assert_allclose(served, (week * 2)[:14], atol=1e-6)
    # a model that learned no covariates refuses them by name
    with pytest.raises(InputError, match="covariates: this model reads none"):
        task.prepare(ForecastRequest(history=history, frequency="daily", covariates={"t": [1.0] * 98}))
    # a long gap before the window, where only the combination reads: the window alone is read
    gappy = week * 30
    gappy[100:106] = [None] * 6
    request = ForecastRequest(history=gappy, frequency="daily")
    prepared = task.prepare(request)
    assert len(prepared.values) == window and prepared.interpolated == 0
    task.combine_windows = 0
    alone = forecast()
    assert np.ptp(alone) < 1e-6 and not np.allclose(alone, served)
