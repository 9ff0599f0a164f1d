"""Forecasting: one global quantile forecaster (p10/p50/p90 by pinball loss) for series of every
frequency in serving/processing/series.py FREQUENCIES, pretrained on a generated corpus of all of
them (training/data/series.py `corpus`) and fine-tuned on the recipe's series with the corpus
replayed beside it, so that the fine-tuned model still serves the other frequencies.

The network reads what `series_features` makes of a history: the last `context` points (padded and
flagged where the history is shorter), scaled by the recent level and spread, and for each step
ahead the values at the same phase of the last seasons of the frequency's two periods, with a few
diagnostics of how the history behaved. A 1-D CNN and a linear map of the whole context make a
summary; a per-step MLP reads a projection of it, the step's seasonal lags and a learned step
embedding. It weighs (softmax) classical forecasts made of the lags and the context (`candidates`:
per period the last season and the mean of the last two or three, the last value, the recent level,
and the first period's seasonal profile over the whole context, as is and at the last season's
level), as feature-based forecast averaging does, and corrects the blend; a linear readout of the summary adds
a correction of its own per step. The outer quantiles are kept ordered by construction. Each
example's loss is divided by the seasonal-naive error of its own history (MASE's denominator), so
smooth and noisy series weigh alike.

A recipe may name known covariates (`preprocessing.covariates`: further columns of its CSV, such as
temperature and a holiday flag): the network then also reads what serving/processing/series.py
`covariate_features` makes of them and adds a correction of its own to each step (zero at the start,
and nothing at all when a request gives none). Fine-tuning hides the covariates from a share of the
windows (`covariate_drop`), so the model forecasts without them too, and reads the steps ahead with a
forecast's errors (`covariate_errors`); forecasts that read covariates get bands calibrated on the
validation split (`calibrate_bands`). The backtest is scored with observed covariates, with forecast
ones and without.

The recipe's series splits in time order: training windows from the start, validation origins
next, and the held-out tail as a rolling-origin backtest (one forecast per `origin_stride` points).
The manifest's report has MASE and p10-p90 coverage in the series' units for the fine-tuned model,
the pretrained-only model and seasonal-naive. Recipe `preprocessing` keys: `ForecastingPreprocessing`.

Targets are `{"future", "naive", "weight"}` (n, horizon): the scaled truth, the seasonal-naive
forecast and each step's weight (0 past the series' end). Parity is a tolerance on the quantiles.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from serving.processing.series import (
    CLIP,
    COMBINE_WINDOWS,
    COVARIATE_FEATURES,
    FREQUENCIES,
    LAG_FEATURES,
    MAX_GAP,
    SEASONS,
    Covariate,
    Frequency,
    combination_weight,
    combine,
    covariate_features,
    covariate_width,
    manifest_frequencies,
    robust_scale,
    series_features,
    validation_origins,
)
from training.data.arrays import ArrayExamples, array_loader
from training.data.series import UNITS, corpus, csv_header, read_series_table, resolve_series
from training.evaluate import max_abs_diff, torch_outputs
from training.recipe import RecipeError
from training.tasks.base import Preprocessing, Splits, Task

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
WEEK = 168
BEYOND = 0.3  # weight of the steps past a frequency's usual horizon
STEP_DIM = 16


class SeasonalNet(nn.Module):
    band: torch.Tensor

    def __init__(
        self,
        context: int,
        horizon: int,
        width: int = 32,
        embed: int = 64,
        hidden: int = 128,
        wide: int = 256,
        dropout: float = 0.1,
        covariates: int = 0,
    ) -> None:
        super().__init__()
        if context % 64:
            raise ValueError(f"series-seasonal needs a context divisible by 64, got {context}")
        self.context, self.horizon = context, horizon
        self.backbone = nn.Sequential(
            nn.Conv1d(2, 16, 7, padding=3),
            nn.GELU(),
            nn.Conv1d(16, width, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            nn.GELU(),
            nn.AvgPool1d(context // 64),
        )
        self.summary = nn.Sequential(nn.Linear(width * 8 + context, wide), nn.GELU(), nn.Dropout(dropout))
        self.project = nn.Sequential(nn.Linear(wide, embed), nn.GELU())
        self.direct = nn.Linear(wide, horizon * len(QUANTILES))  # a readout of its own per step
        self.steps = nn.Parameter(torch.randn(horizon, STEP_DIM) * 0.1)
        self.head = nn.Sequential(
            nn.Linear(LAG_FEATURES + embed + STEP_DIM, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, len(QUANTILES) + CANDIDATES),  # quantile corrections, candidates' logits
        )
        last = cast(nn.Linear, self.head[-1])
        for layer in (last, self.direct):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():  # start near seasonal-naive, with room for the other candidates to gain weight
            last.bias[len(QUANTILES)] = 2.0
        # the bands' width where the request gives covariates (it is the recipe's own series), set
        # after fine-tuning so that p10-p90 holds 80% of the validation split (`calibrate_bands`);
        # other series keep the width the quantile loss gave them
        self.register_buffer("band", torch.ones(()))
        self.covariates = covariates
        if covariates:
            # reads the covariates' columns, the log of the scale ratio and what the head reads (the
            # step's lags, the summary, the step); answers a shift of the median (in the recipe
            # series' typical scale) and of both bands
            self.covariate_head = nn.Sequential(
                nn.Linear(covariate_width(covariates) + LAG_FEATURES + embed + STEP_DIM, hidden),
                nn.GELU(),
                nn.Linear(hidden, hidden),
                nn.GELU(),
                nn.Linear(hidden, len(QUANTILES)),
            )
            end = cast(nn.Linear, self.covariate_head[-1])
            nn.init.zeros_(end.weight)
            nn.init.zeros_(end.bias)

    def forward(
        self,
        history: torch.Tensor,
        observed: torch.Tensor,
        lags: torch.Tensor,
        covariates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conv = self.backbone(torch.stack([history, observed], dim=1)).flatten(1)
        wide = self.summary(torch.cat([conv, history], dim=1))
        summary = self.project(wide)
        n = lags.shape[0]
        per_step = torch.cat(
            [
                lags,
                summary.unsqueeze(1).expand(n, self.horizon, summary.shape[1]),
                self.steps.unsqueeze(0).expand(n, self.horizon, STEP_DIM),
            ],
            dim=-1,
        )
        head = self.head(per_step)
        out = head[..., : len(QUANTILES)] + self.direct(wide).view(n, self.horizon, len(QUANTILES))
        band: torch.Tensor | float = 1.0
        if covariates is not None and self.covariates:
            flags = covariates[..., COVARIATE_FEATURES - 1 : -1 : COVARIATE_FEATURES]
            given = flags.amax(-1)  # (n, horizon): 1 where the request gave any covariate
            out = out + self.covariate_shift(covariates, per_step) * given.unsqueeze(-1)
            band = 1.0 + (self.band - 1.0) * given
        weights = torch.softmax(head[..., len(QUANTILES) :], dim=-1)
        median = (weights * candidates(history, observed, lags)).sum(-1) + out[..., 1]
        low = median - band * nn.functional.softplus(out[..., 0])
        high = median + band * nn.functional.softplus(out[..., 2])
        return torch.stack([low, median, high], dim=-1)

    def covariate_shift(self, covariates: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """(n, horizon, quantiles) added to the network's corrections where covariates are given."""
        ratio = covariates[..., -1:]
        shift = self.covariate_head(torch.cat([covariates[..., :-1], torch.log(ratio), context], dim=-1))
        return torch.cat([shift[..., :1], shift[..., 1:2] * ratio, shift[..., 2:]], dim=-1)


CANDIDATES = 9
PERIOD_FEATURE = 4 * SEASONS  # lags' column of log1p(first period) / log1p(168) (seasonal_lags)


def candidates(history: torch.Tensor, observed: torch.Tensor, lags: torch.Tensor) -> torch.Tensor:
    """(n, horizon, CANDIDATES) classical forecasts made of the seasonal lags (serving/processing/
    series.py `seasonal_lags`) and the context, in scaled units: per period, the last season and the
    mean of the last two and three (of those the history reaches); the last value; the recent level
    (0); and, for the first period, the mean of every season the context holds at the step's phase,
    as is and moved to the last season's level (a seasonal profile that noise and outages in any one
    season hardly move)."""
    out = []
    for base in (0, 2 * SEASONS):
        values = lags[..., base : base + 2 * SEASONS : 2]
        seen = lags[..., base + 1 : base + 2 * SEASONS : 2]
        out.append(values[..., 0])
        for k in (2, 3):
            out.append((values[..., :k] * seen[..., :k]).sum(-1) / seen[..., :k].sum(-1).clamp_min(1.0))
    last = history[:, -1:].expand(lags.shape[0], lags.shape[1])
    profile, adjusted = seasonal_profile(history, observed, lags)
    return torch.stack([*out[:3], out[3], out[5], last, torch.zeros_like(last), profile, adjusted], dim=-1)


def seasonal_profile(
    history: torch.Tensor, observed: torch.Tensor, lags: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, horizon) twice: the mean of the observed context points at each step's phase of the first
    period, and that profile less the context's mean plus the last season's mean."""
    context, horizon = history.shape[1], lags.shape[1]
    period = torch.round(torch.exp(lags[:, 0, PERIOD_FEATURE] * math.log1p(WEEK)) - 1).to(torch.int64)
    period = period.clamp_min(1).view(-1, 1, 1)
    t = torch.arange(context, dtype=torch.int64).view(1, 1, context)
    h = torch.arange(horizon, dtype=torch.int64).view(1, horizon, 1)
    # (t - context) mod period, kept non-negative before the modulo
    same_phase = ((t + (period - 1) * context) % period) == (h % period)
    weight = same_phase.to(history.dtype) * observed.unsqueeze(1)
    profile = (weight * history.unsqueeze(1)).sum(-1) / weight.sum(-1).clamp_min(1.0)
    recent = (t.view(1, context) >= context - period.view(-1, 1)).to(history.dtype) * observed
    level = (recent * history).sum(-1) / recent.sum(-1).clamp_min(1.0)
    mean = (observed * history).sum(-1) / observed.sum(-1).clamp_min(1.0)
    return profile, profile + (level - mean).unsqueeze(1)


def pinball(pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    q = torch.tensor(QUANTILES, dtype=pred.dtype, device=pred.device)
    err = truth.unsqueeze(-1) - pred
    loss = torch.maximum(q * err, (q - 1) * err).mean(-1)
    return (loss * weight).sum() / weight.sum().clamp_min(1e-6)


def naive_error(scaled: np.ndarray, period: int) -> float:
    """In-sample seasonal-naive MAE of a scaled history (MASE's denominator), floored."""
    if len(scaled) <= period:
        return 1.0
    return max(float(np.abs(scaled[period:] - scaled[:-period]).mean()), 0.05)


def windows(
    values: np.ndarray,
    origins: np.ndarray,
    frequency: Frequency,
    context: int,
    horizon: int,
    starts: np.ndarray | None = None,
    known: CovariateData | None = None,
) -> tuple[ArrayExamples, np.ndarray, np.ndarray]:
    """Examples for forecast origins (index of the first forecast point) of one series; histories
    begin at `starts` (default: as far back as the context reaches). Also returns loc and scale.
    With `known`, the examples also hold its covariates' features (zero where it has no values)."""
    n = len(origins)
    history = np.empty((n, context), np.float32)
    observed = np.empty((n, context), np.float32)
    lags = np.empty((n, horizon, LAG_FEATURES), np.float32)
    future = np.zeros((n, horizon), np.float32)
    weight = np.zeros((n, horizon), np.float32)
    loc, scale = np.empty(n), np.empty(n)
    step_weight = np.where(np.arange(horizon) < frequency.horizon, 1.0, BEYOND)
    for i, origin in enumerate(origins):
        begin = max(0, origin - context) if starts is None else starts[i]
        history[i], observed[i], lags[i], loc[i], scale[i] = series_features(
            values[begin:origin], frequency, context, horizon
        )
        ahead = values[origin : origin + horizon]
        future[i, : len(ahead)] = np.clip((ahead - loc[i]) / scale[i], -CLIP, CLIP)
        kept = history[i][observed[i] > 0]
        weight[i, : len(ahead)] = step_weight[: len(ahead)] / naive_error(kept, frequency.periods[0])
    inputs = {"history": history, "observed": observed, "lags": lags}
    if known is not None:
        inputs["covariates"] = known.features(origins, starts, frequency, context, horizon, scale)
    examples = ArrayExamples(inputs, {"future": future, "naive": lags[..., 0].copy(), "weight": weight})
    return examples, loc, scale


class CovariateData:
    """A recipe's covariates: their values beside its series (None: none, as for the corpus), the
    statistics the features are read with, and the series' typical scale."""

    def __init__(self, specs: list[Covariate], values: np.ndarray | None, reference_scale: float) -> None:
        self.specs, self.values, self.reference_scale = specs, values, reference_scale

    def features(
        self,
        origins: np.ndarray,
        starts: np.ndarray | None,
        frequency: Frequency,
        context: int,
        horizon: int,
        scales: np.ndarray,
        errors: dict[str, float] | None = None,
    ) -> np.ndarray:
        """(origins, horizon, width); with `errors` (name → standard deviation), the steps ahead
        read each such covariate as a forecast would give it: plus one error drawn per origin and a
        third as much drawn per step (seeded: every build draws the same)."""
        out = np.zeros((len(origins), horizon, covariate_width(len(self.specs))), np.float32)
        rng = np.random.default_rng(0)
        for i, origin in enumerate(origins):
            begin = max(0, origin - context) if starts is None else starts[i]
            end = min(origin + horizon, len(self.values[0])) if self.values is not None else origin
            rows: list[np.ndarray | None] = (
                [row[begin:end].copy() for row in self.values]
                if self.values is not None
                else [None] * len(self.specs)
            )
            for spec, row in zip(self.specs, rows):
                sigma = (errors or {}).get(spec.name, 0.0)
                if sigma > 0 and row is not None:
                    ahead = len(row) - (origin - begin)
                    row[origin - begin :] += rng.normal(0, sigma) + rng.normal(0, sigma / 3, ahead)
            out[i] = covariate_features(
                rows, self.specs, frequency, origin - begin, horizon, float(scales[i]), self.reference_scale
            )
        return out

    def hidden(self, examples: ArrayExamples) -> ArrayExamples:
        """The same examples with every covariate left out (as a request without them)."""
        inputs = dict(examples.inputs)
        inputs["covariates"] = hide_covariates(
            inputs["covariates"], np.ones((len(examples), len(self.specs)), bool)
        )
        return ArrayExamples(inputs, examples.targets)


def hide_covariates(features: np.ndarray, hide: np.ndarray) -> np.ndarray:
    """`features` (n, horizon, width) with covariate k of example i zeroed where hide[i, k]."""
    out = features.copy()
    for k in range(hide.shape[1]):
        out[hide[:, k], :, k * COVARIATE_FEATURES : (k + 1) * COVARIATE_FEATURES] = 0.0
    return out


def corpus_windows(count: int, seed: int, per_series: int, context: int, horizon: int) -> ArrayExamples:
    """Windows of a generated corpus of every frequency: random origins, and one history in three
    cut short (down to the frequency's minimum). They hold no covariates: pretraining runs the
    network without its covariates' head."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, name, values in corpus(count, seed):
        frequency = FREQUENCIES[name]
        low = frequency.min_history
        if len(values) < low + 1:
            continue
        origins = rng.integers(low, len(values), per_series)
        short = rng.random(per_series) < 1 / 3
        starts = np.where(
            short,
            origins - rng.integers(low, np.minimum(origins, context) + 1),
            np.maximum(0, origins - context),
        )
        parts.append(windows(values, origins, frequency, context, horizon, starts)[0])
    return ArrayExamples.concatenate(parts)


class ForecastingPreprocessing(Preprocessing):
    context: int = Field(
        512,
        ge=WEEK,
        description="points of history the model reads (a multiple of 64; for hourly data, three weeks)",
    )
    horizon: int = Field(48, ge=1, le=WEEK, description="steps forecast, at most (requests may ask fewer)")
    frequency: str = Field(
        "hourly", description="the recipe's series: one of serving/processing/series.py FREQUENCIES"
    )
    train_stride: int = Field(1, ge=1, description="points between training origins")
    origin_stride: int | None = Field(
        None,
        ge=1,
        description="points between backtest origins (default: a day of hourly data, a week of daily, else 1)",
    )
    val_stride: int | None = Field(
        None, ge=1, description="points between validation origins (default: 6 for hourly data, else 1)"
    )
    backtest_horizon: int | None = Field(
        None, ge=1, description="steps scored by the backtest (default: the frequency's usual horizon)"
    )
    replay: float = Field(
        1.0, ge=0, description="corpus windows replayed in fine-tuning, per window of the recipe's series"
    )
    covariates: dict[str, str] = Field(
        {},
        description="known covariates: CSV column → what it is (the client sends them for the history and the steps ahead)",
    )
    covariate_errors: dict[str, float] = Field(
        {},
        description="the standard deviation of the error of each covariate's forecast the model will be sent "
        "(its units): training and a backtest read the steps ahead with such errors (one per window, a third as "
        "much per step)",
    )
    covariate_drop: float = Field(
        0.4,
        ge=0,
        le=1,
        description="share of training windows that read no covariate; each of the rest hides each covariate "
        "half as often (requests may send some, all or none)",
    )


class ForecastingTask(Task[ForecastingPreprocessing]):
    name = "forecasting"
    modality = "series"
    metric = "skill"  # 1 - MAE(p50) / MAE(seasonal naive), weighted as the loss, on scaled windows
    output_names: ClassVar[list[str]] = ["quantiles"]
    preprocessing_model = ForecastingPreprocessing

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        o = self.options
        if o.frequency not in FREQUENCIES:
            raise RecipeError(
                f"recipe {recipe.name!r}: preprocessing.frequency {o.frequency!r} is not one of {', '.join(FREQUENCIES)}"
            )
        if o.augment_strength > 0:
            raise RecipeError(
                f"recipe {recipe.name!r}: forecasting has no augmentation (the pretraining corpus varies the series); "
                "set preprocessing.augment_strength to 0"
            )
        self.context, self.horizon, self.frequency = o.context, o.horizon, FREQUENCIES[o.frequency]
        self.series: np.ndarray | None = None
        self.test_origins: np.ndarray | None = None
        self.pretrained: nn.Module | None = None
        # the covariates read: the recipe's, less those its CSV lacks (load_data), or the manifest's
        # (restore); their statistics come from the training split
        self.covariate_names: list[str] = list(o.covariates)
        self.known: CovariateData | None = None

    @property
    def input_names(self) -> list[str]:
        return ["history", "observed", "lags", *(["covariates"] if self.covariate_names else [])]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch"} for name in [*self.input_names, "quantiles"]}

    def strides(self) -> tuple[int, int, int]:
        """(backtest horizon, backtest origin stride, validation stride) for the recipe's frequency."""
        o, name = self.options, self.frequency.name
        horizon = min(o.backtest_horizon or self.frequency.horizon, self.horizon)
        origin = o.origin_stride or {"hourly": 24, "daily": 7}.get(name, 1)
        val = o.val_stride or (6 if name == "hourly" else 1)
        return horizon, origin, val

    def load_data(self) -> Splits:
        """Training origins from the start (their futures end before validation), validation origins
        next (futures before the test split), the test split last; each split holds at least three
        origins, so short monthly or yearly series split too."""
        d, o = self.recipe.data, self.options
        path, column = resolve_series(d.source, d.seed)
        header = csv_header(path)
        lacking = [name for name in self.covariate_names if name not in header]
        if lacking:
            log.warning(
                "%s: %s has no column(s) %s; the model is trained without those covariates",
                self.recipe.name,
                path,
                lacking,
            )
        names = self.covariate_names = [name for name in self.covariate_names if name in header]
        table = read_series_table(path, [column, *names], frequency=self.frequency.name)
        series = table[0]
        steps, origin_stride, val_stride = self.strides()
        n = len(series)
        test_len = max(int(n * d.test_fraction), steps + 2 * origin_stride)
        val_len = max(int(n * d.val_fraction), steps + 2 * val_stride)
        train_end = n - test_len - val_len
        first = self.frequency.min_history
        train_origins = np.arange(first, train_end - self.frequency.horizon + 1, o.train_stride)
        if len(train_origins) < 10:
            unit = UNITS[self.frequency.name]
            raise ValueError(
                f"{path}: {n} {unit}s is too short: the {self.frequency.name} history needs {first}, "
                f"then at least 10 training origins {self.frequency.horizon} {unit}s ahead, "
                f"{val_len} for validation and {test_len} for the backtest"
            )
        self.series, self.train_end = series, train_end
        if d.limit is not None:
            train_origins = train_origins[-d.limit :]
        val_origins = np.arange(train_end, n - test_len - steps + 1, val_stride)
        test_origins = np.arange(n - test_len, n - steps + 1, origin_stride)
        self.test_origins = test_origins
        if names:
            self.known = self.covariate_data(table[1:], train_origins)

        def make(values: np.ndarray, origins: np.ndarray) -> tuple[ArrayExamples, np.ndarray, np.ndarray]:
            return windows(values, origins, self.frequency, self.context, self.horizon, known=self.known)

        train = make(series[:train_end], train_origins)[0]
        val = make(series[: n - test_len], val_origins)[0]
        test, self.test_loc, self.test_scale = make(series, test_origins)
        return Splits(train, val, test, [f"p{round(q * 100)}" for q in QUANTILES])

    def covariate_data(self, values: np.ndarray, train_origins: np.ndarray) -> CovariateData:
        """The covariates' statistics over the training split, and the series' typical scale: the
        median of the training windows' (every day's, for hourly data)."""
        assert self.series is not None
        train = values[:, : self.train_end]
        specs = [
            Covariate(name, float(row.mean()), max(float(row.std()), 1e-6), self.options.covariates[name])
            for name, row in zip(self.covariate_names, train)
        ]
        reach = min(self.context, self.frequency.reach)
        scales = [
            robust_scale(self.series[max(0, o - reach) : o], self.frequency)[1]
            for o in train_origins[:: self.frequency.periods[1] if self.frequency.name == "hourly" else 1]
        ]
        return CovariateData(specs, values, float(np.median(scales)))

    def build_model(self, label_names: list[str]) -> nn.Module:
        return SeasonalNet(
            self.context,
            self.horizon,
            dropout=self.recipe.train.dropout,
            covariates=len(self.covariate_names),
        )

    def restore(self, preprocessing: dict[str, Any]) -> None:
        self.context, self.horizon = int(preprocessing["window"]), int(preprocessing["horizon"])
        listed = preprocessing.get("covariates") or []
        self.covariate_names = []
        if listed:
            specs = [Covariate(c["name"], c["mean"], c["std"], c.get("description", "")) for c in listed]
            self.covariate_names = [c.name for c in specs]
            self.known = CovariateData(specs, None, float(preprocessing["reference_scale"]))

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """Pretrain on the generated corpus (the recipe's `pretrain` section), keep a copy for the
        report, and mix corpus windows into the training split (`replay`)."""
        cfg = self.recipe.pretrain
        if cfg is None or cfg.epochs == 0:
            return
        from training.loop import fit

        per_series = cfg.windows_per_series
        corpus_train = corpus_windows(cfg.series, cfg.seed, per_series, self.context, self.horizon)
        corpus_val = corpus_windows(
            max(20, cfg.series // 20), cfg.seed + 1, per_series, self.context, self.horizon
        )
        log.info(
            "%s: pretraining on %d generated series of every frequency (%d windows)",
            self.recipe.name,
            cfg.series,
            len(corpus_train),
        )
        result = fit(
            model,
            self,
            Splits(corpus_train, corpus_val, corpus_val, splits.label_names),
            cfg,
            progress=self.progress,
        )
        self.report["pretraining"] = {
            "series": cfg.series,
            "windows": len(corpus_train),
            "frequencies": list(FREQUENCIES),
            "best_val_skill": result.best_metric,
            "steps": result.steps,
        }
        self.pretrained = copy.deepcopy(model).eval()
        replay = int(len(splits.train) * self.options.replay)
        if replay:
            pick = np.random.default_rng(cfg.seed).permutation(len(corpus_train))[:replay]
            replayed = corpus_train.subset(np.sort(pick))
            if "covariates" in splits.train.inputs:  # none given: the head adds nothing to these
                absent = np.zeros(
                    (len(replayed), self.horizon, covariate_width(len(self.covariate_names))), np.float32
                )
                absent[..., -1] = 1.0
                replayed.inputs["covariates"] = absent
            splits.train = ArrayExamples.concatenate([splits.train, replayed])

    def loader(self, split: ArrayExamples, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        seed = self.recipe.train.seed
        transform = None
        if shuffle and "covariates" in split.inputs and self.known is not None:
            rng, share, known = np.random.default_rng(seed), self.options.covariate_drop, self.known
            errors = self.options.covariate_errors

            def transform(inputs: dict[str, np.ndarray], targets: Any) -> tuple[dict[str, np.ndarray], Any]:
                """Covariates hidden (`covariate_drop`), and the steps ahead read with a forecast's
                errors (`covariate_errors`, in standardised units) where given."""
                n, horizon = inputs["covariates"].shape[:2]
                features = inputs["covariates"].copy()
                for k, spec in enumerate(known.specs):
                    sigma = errors.get(spec.name, 0.0) / spec.std
                    if sigma > 0:
                        column = k * COVARIATE_FEATURES
                        noise = rng.normal(0, sigma, (n, 1)) + rng.normal(0, sigma / 3, (n, horizon))
                        features[..., column] += noise * features[..., column + COVARIATE_FEATURES - 1]
                hide = (rng.random((n, 1)) < share) | (rng.random((n, len(known.specs))) < share / 2)
                return {**inputs, "covariates": hide_covariates(features, hide)}, targets

        return array_loader(split, batch_size or self.recipe.train.batch_size, shuffle, seed, transform)

    def loss(self, outputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return pinball(outputs, targets["future"], targets["weight"])

    def metrics(
        self, outputs: np.ndarray, targets: dict[str, np.ndarray], label_names: list[str]
    ) -> dict[str, Any]:
        truth, naive, w = targets["future"], targets["naive"], targets["weight"]
        mae = float((np.abs(outputs[..., 1] - truth) * w).sum() / w.sum())
        mae_naive = float((np.abs(naive - truth) * w).sum() / w.sum())
        q = np.asarray(QUANTILES)
        err = truth[..., None] - outputs
        inside = (outputs[..., 0] <= truth) & (truth <= outputs[..., 2])
        present = w > 0
        return {
            "skill": 1 - mae / mae_naive if mae_naive > 0 else 0.0,
            "weighted_mae": mae,
            "pinball": float((np.maximum(q * err, (q - 1) * err).mean(-1) * w).sum() / w.sum()),
            "coverage_p10_p90": float(inside[present].mean()),
            "n": len(truth),
        }

    def parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
        """Quantiles are values, not scores of classes: the tolerance alone decides."""
        return {"max_abs_diff": max_abs_diff(reference, candidate)}

    def after_fit(self, model: nn.Module, splits: Splits) -> None:
        """Rolling-origin backtest on the held-out tail, in the series' units, over the first
        `backtest_horizon` steps (reported, decides nothing)."""
        if self.series is None:
            return
        self.calibrate_bands(model, splits.val)
        steps, period = self.strides()[0], self.frequency.periods[0]
        train = self.series[: self.train_end]
        scale = float(np.abs(train[period:] - train[:-period]).mean())  # MASE's denominator
        loc, spread = self.test_loc[:, None], self.test_scale[:, None]
        truth = (splits.test.targets["future"] * spread + loc)[:, :steps]
        naive = (splits.test.targets["naive"] * spread + loc)[:, :steps]

        def score(outputs: np.ndarray | None, median: np.ndarray) -> dict[str, float]:
            per_origin = np.abs(median - truth).mean(1)
            out = {
                "mase": float(per_origin.mean() / scale),
                # over the origins: how far the backtest's few dozen days can be trusted to tell two models apart
                "mase_standard_error": float(per_origin.std(ddof=1) / np.sqrt(len(per_origin)) / scale),
                "mae": float(per_origin.mean()),
            }
            if outputs is not None:
                out["coverage_p10_p90"] = float(
                    ((outputs[..., 0] <= truth) & (truth <= outputs[..., 2])).mean()
                )
            return out

        def run(m: nn.Module, test: ArrayExamples = splits.test) -> np.ndarray:
            batches = list(self.loader(test, shuffle=False, batch_size=256))
            return (torch_outputs(m, self, batches)[0] * spread[..., None] + loc[..., None])[:, :steps]

        tuned = run(model)
        served = self.combined(model, tuned)
        backtest: dict[str, Any] = {
            "origins": len(truth),
            "horizon": steps,
            "mase_scale": scale,
            "fine_tuned": score(served, served[..., 1]),
            "network_alone": score(tuned, tuned[..., 1]),
            "seasonal_naive": score(None, naive),
        }
        errors = {k: v for k, v in self.options.covariate_errors.items() if k in self.covariate_names}
        if (
            self.known is not None and errors and self.test_origins is not None
        ):  # covariates ahead as forecast
            noisy = ArrayExamples(dict(splits.test.inputs), splits.test.targets)
            noisy.inputs["covariates"] = self.known.features(
                self.test_origins, None, self.frequency, self.context, self.horizon, self.test_scale, errors
            )
            forecast = self.combined(model, run(model, noisy))
            backtest["with_forecast_covariates"] = score(forecast, forecast[..., 1]) | {"errors": errors}
        if self.known is not None:  # the same model, asked without its covariates
            plain = self.combined(model, run(model, self.known.hidden(splits.test)), covariates=False)
            backtest["without_covariates"] = score(plain, plain[..., 1])
        if self.pretrained is not None:
            pre = self.combined(self.pretrained, run(self.pretrained))
            backtest["pretrained_only"] = score(pre, pre[..., 1])
        self.report["backtest"] = backtest
        log.info(
            "%s: backtest MASE fine-tuned %.3f (%s without covariates), pretrained-only %s, seasonal-naive %.3f; "
            "p10-p90 coverage %.1f%%",
            self.recipe.name,
            backtest["fine_tuned"]["mase"],
            f"{backtest['without_covariates']['mase']:.3f}" if "without_covariates" in backtest else "-",
            f"{backtest['pretrained_only']['mase']:.3f}" if "pretrained_only" in backtest else "-",
            backtest["seasonal_naive"]["mase"],
            backtest["fine_tuned"]["coverage_p10_p90"] * 100,
        )

    def calibrate_bands(self, model: nn.Module, val: ArrayExamples) -> None:
        """For a model with covariates: scale both bands around the median so that p10-p90 holds 80%
        of the validation split's points, which all carry the covariates (each point needs the band
        scaled by its distance from the median over the band's half-width on its side; the scale is
        the 80th percentile of that)."""
        if not isinstance(model, SeasonalNet) or not model.covariates:
            return
        model.band.fill_(1.0)
        batches = list(self.loader(val, shuffle=False, batch_size=256))
        out = torch_outputs(model, self, batches)[0]
        truth, present = val.targets["future"], val.targets["weight"] > 0
        low, median, high = out[..., 0], out[..., 1], out[..., 2]
        need = np.where(
            truth >= median, (truth - median) / (high - median), (median - truth) / (median - low)
        )
        scale = float(np.quantile(need[present], QUANTILES[-1] - QUANTILES[0]))
        model.band.fill_(scale)
        self.report["bands"] = {
            "scale": scale,
            "validation_coverage_before": float((need[present] <= 1.0).mean()),
        }
        log.info(
            "%s: p10-p90 bands scaled by %.3f to hold 80%% of the validation split", self.recipe.name, scale
        )

    def combined(self, model: nn.Module, forecasts: np.ndarray, covariates: bool = True) -> np.ndarray:
        """The backtest's forecasts (origins, steps, quantiles; the series' units) as the server
        answers them: combined with seasonal-naive by each one's error on the windows before the
        origin, in the history a request would carry (serving/processing/series.py `combine`); the
        network reads those windows' covariates where `covariates` (and the recipe has them)."""
        assert self.series is not None and self.test_origins is not None
        usual = min(self.frequency.horizon, self.horizon)
        held = self.context + COMBINE_WINDOWS * usual
        starts = [max(0, int(o) - held) for o in self.test_origins]
        cuts = [
            validation_origins(int(o) - b, self.frequency, usual) for o, b in zip(self.test_origins, starts)
        ]
        flat = np.array([b + c for b, cs in zip(starts, cuts) for c in cs], dtype=int)
        medians: list[np.ndarray] = []
        if len(flat):
            known = self.known
            if known is not None and not covariates:
                known = CovariateData(known.specs, None, known.reference_scale)
            examples, loc, spread = windows(
                self.series, flat, self.frequency, self.context, self.horizon, known=known
            )
            batches = list(self.loader(examples, shuffle=False, batch_size=256))
            medians = list(torch_outputs(model, self, batches)[0][..., 1] * spread[:, None] + loc[:, None])
        levels, out, k = np.asarray(QUANTILES), np.empty_like(forecasts), 0
        for i, (o, b, cs) in enumerate(zip(self.test_origins, starts, cuts)):
            values = self.series[b : int(o)]
            weight = combination_weight(values, cs, medians[k : k + len(cs)], self.frequency, usual)
            out[i] = combine(forecasts[i], values, self.frequency, weight, levels)
            k += len(cs)
        return out

    def figures(
        self,
        folder: Path,
        outputs: np.ndarray,
        targets: dict[str, np.ndarray],
        splits: Splits,
        metrics: dict[str, Any],
    ) -> dict[str, Path]:
        """The backtest in the series' units: the held-out tail, each origin's p50 forecast with its
        p10-p90 band, and seasonal-naive beside it."""
        if self.series is None:
            return {}
        assert self.test_origins is not None  # load_data sets it with the series
        from training import figures

        steps = self.strides()[0]
        loc, spread = self.test_loc[:, None], self.test_scale[:, None]
        path = figures.backtest(
            folder / "backtest.png",
            self.series,
            self.test_origins,
            (outputs * spread[..., None] + loc[..., None])[:, :steps],
            naive=(targets["naive"] * spread + loc)[:, :steps],
            context=WEEK,
            title=f"{self.recipe.name}: backtest on the test split (skill {metrics['skill']:.3f})",
        )
        return {"backtest": path}

    def preprocessing_config(self) -> dict[str, Any]:
        return {
            "kind": "series",
            "window": self.context,
            "horizon": self.horizon,
            "quantiles": list(QUANTILES),
            "max_gap": MAX_GAP,
            "frequency": self.frequency.name,
            "frequencies": manifest_frequencies(),
            "combine_windows": COMBINE_WINDOWS,
            "scaling": "recent level and spread (serving/processing/series.py robust_scale)",
            **(
                {
                    "covariates": [vars(c) for c in self.known.specs],
                    "reference_scale": self.known.reference_scale,
                }
                if self.known is not None
                else {}
            ),
        }

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        pick = np.random.default_rng(0).permutation(len(splits.train))[:count]
        x = splits.train.subset(np.sort(pick)).inputs
        return [{k: v[i : i + 64] for k, v in x.items()} for i in range(0, len(pick), 64)]
