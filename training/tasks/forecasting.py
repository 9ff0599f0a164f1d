"""Forecasting: a global 1-D CNN quantile forecaster (p10/p50/p90 by pinball loss) pretrained on a
synthetic corpus of hourly series, then fine-tuned on the target series.

Each example is the last `window` points before a forecast origin and the `horizon` points after it,
both standardised by the history window's own mean and standard deviation (serving does the same
from the request's history). The network predicts corrections to the seasonal-naive forecast (the
same hour one week earlier), with quantiles kept ordered by construction.

Splits are in time order: training windows from the start, validation origins next, and the held-out
tail as a rolling-origin backtest (one 24-hour forecast per day). The manifest's report has MASE and
p10-p90 coverage in the series' units for the fine-tuned model, the pretrained-only model and
seasonal-naive. Recipe `preprocessing` keys: `ForecastingPreprocessing`.

Targets are `{"future": (n, horizon), "naive": (n, horizon)}`: the standardised truth and the
seasonal-naive baseline the `skill` metric compares with. Parity is a tolerance on the quantiles
(there is no class to agree on).
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from serving.processing.series import MAX_GAP, standardise
from training.augment import augment_series
from training.data.arrays import ArrayExamples, array_loader
from training.data.series import read_series_csv, resolve_series, synthetic_corpus
from training.evaluate import max_abs_diff, torch_outputs
from training.tasks.base import Preprocessing, Splits, Task

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
WEEK = 168


class SeriesCNN(nn.Module):
    def __init__(
        self, window: int, horizon: int, width: int = 32, hidden: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if window < WEEK or horizon > WEEK:
            raise ValueError(f"series-cnn needs window ≥ {WEEK} and horizon ≤ {WEEK} (seasonal-naive skip)")
        self.window, self.horizon = window, horizon
        self.backbone = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3),
            nn.GELU(),
            nn.Conv1d(16, width, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2),
            nn.GELU(),
        )
        conv_out = width * math.ceil(math.ceil(window / 2) / 2)
        self.mix = nn.Sequential(nn.Linear(conv_out + window, hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, horizon * len(QUANTILES))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        features = self.backbone(history.unsqueeze(1)).flatten(1)
        out = self.head(self.mix(torch.cat([features, history], dim=1))).view(-1, self.horizon, 3)
        start = self.window - WEEK
        median = history[:, start : start + self.horizon] + out[..., 1]
        low = median - nn.functional.softplus(out[..., 0])
        high = median + nn.functional.softplus(out[..., 2])
        return torch.stack([low, median, high], dim=-1)


def pinball(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    q = torch.tensor(QUANTILES, dtype=pred.dtype)
    err = truth.unsqueeze(-1) - pred
    return torch.maximum(q * err, (q - 1) * err).mean()


def seasonal_naive(history: np.ndarray, horizon: int) -> np.ndarray:
    """The forecast that repeats the same hours one week earlier, from (n, window) histories."""
    start = history.shape[1] - WEEK
    return history[:, start : start + horizon]


def windows(
    series: np.ndarray, origins: np.ndarray, window: int, horizon: int
) -> tuple[ArrayExamples, np.ndarray, np.ndarray]:
    """Examples for forecast origins (index of the first forecast point); targets are the future and
    its seasonal-naive forecast, standardised like the history. Also returns loc and scale."""
    view = sliding_window_view(series, window + horizon)[origins - window]
    history, future = view[:, :window], view[:, window:]
    x, loc, scale = standardise(history)
    y = ((future - loc) / scale).astype(np.float32)
    return (
        ArrayExamples({"history": x}, {"future": y, "naive": seasonal_naive(x, horizon)}),
        loc[:, 0],
        scale[:, 0],
    )


class ForecastingPreprocessing(Preprocessing):
    window: int = Field(
        WEEK,
        ge=WEEK,
        description="hours of history the model reads (at least a week: the seasonal-naive skip)",
    )
    horizon: int = Field(24, ge=1, le=WEEK, description="hours forecast")
    train_stride: int = Field(1, ge=1, description="hours between training origins")
    origin_stride: int = Field(24, ge=1, description="hours between validation and backtest origins")
    # augment_strength: jitter, magnitude warp, window slicing (training/augment.py)


class ForecastingTask(Task[ForecastingPreprocessing]):
    name = "forecasting"
    modality = "series"
    metric = "skill"  # 1 - MAE(p50) / MAE(seasonal naive), on standardised windows
    input_names: ClassVar[list[str]] = ["history"]
    output_names: ClassVar[list[str]] = ["quantiles"]
    dynamic_axes: ClassVar[dict[str, dict[int, str]]] = {"history": {0: "batch"}, "quantiles": {0: "batch"}}
    preprocessing_model = ForecastingPreprocessing

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self.window, self.horizon = self.options.window, self.options.horizon
        self.train_stride, self.origin_stride = self.options.train_stride, self.options.origin_stride
        self.series: np.ndarray | None = None
        self.test_origins: np.ndarray | None = None
        self.pretrained: nn.Module | None = None

    def load_data(self) -> Splits:
        d = self.recipe.data
        path, column = resolve_series(d.source, d.seed)
        series = read_series_csv(path, value_column=column)
        n = len(series)
        test_len, val_len = int(n * d.test_fraction), int(n * d.val_fraction)
        train_end = n - test_len - val_len
        if train_end - self.window - self.horizon < 10 * WEEK // 7:
            raise ValueError(
                f"{path}: {n} hourly points is too short for window {self.window} + horizon {self.horizon} and the splits"
            )
        self.series = series
        self.train_end = train_end
        train_origins = np.arange(self.window, train_end - self.horizon + 1, self.train_stride)
        if d.limit is not None:
            train_origins = train_origins[-d.limit :]
        val_origins = np.arange(train_end, n - test_len - self.horizon + 1, self.origin_stride)
        test_origins = np.arange(n - test_len, n - self.horizon + 1, self.origin_stride)
        self.test_origins = test_origins
        train, _, _ = windows(series, train_origins, self.window, self.horizon)
        val, _, _ = windows(series, val_origins, self.window, self.horizon)
        test, self.test_loc, self.test_scale = windows(series, test_origins, self.window, self.horizon)
        return Splits(train, val, test, [f"p{round(q * 100)}" for q in QUANTILES])

    def build_model(self, label_names: list[str]) -> nn.Module:
        return SeriesCNN(self.window, self.horizon, dropout=self.recipe.train.dropout)

    def prepare(self, model: nn.Module, splits: Splits) -> None:
        """Pretrain on the synthetic corpus (the recipe's `pretrain` section), keep a copy for the report."""
        cfg = self.recipe.pretrain
        if cfg is None or cfg.epochs == 0:
            return
        from training.loop import fit

        corpus = synthetic_corpus(cfg.series, cfg.length, cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        parts = []
        for s in corpus:
            origins = np.arange(
                self.window + rng.integers(self.origin_stride), len(s) - self.horizon + 1, self.origin_stride
            )
            parts.append(windows(s, origins, self.window, self.horizon)[0])
        cut = max(1, len(parts) // 20)  # the last 5% of series validate the pretraining
        train, val = ArrayExamples.concatenate(parts[cut:]), ArrayExamples.concatenate(parts[:cut])
        log.info(
            "%s: pretraining on %d synthetic series (%d windows)", self.recipe.name, len(corpus), len(train)
        )
        result = fit(model, self, Splits(train, val, val, splits.label_names), cfg, progress=self.progress)
        self.report["pretraining"] = {
            "series": cfg.series,
            "windows": len(train),
            "best_val_skill": result.best_metric,
            "steps": result.steps,
        }
        self.pretrained = copy.deepcopy(model).eval()

    def loader(self, split: ArrayExamples, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        strength = self.options.augment_strength
        transform = None
        if shuffle and strength > 0:
            rng = np.random.default_rng(self.recipe.train.seed)

            def transform(inputs, targets):
                history, future = augment_series(inputs["history"], targets["future"], strength, rng)
                return {"history": history}, {
                    "future": future,
                    "naive": seasonal_naive(history, self.horizon),
                }

        return array_loader(
            split, batch_size or self.recipe.train.batch_size, shuffle, self.recipe.train.seed, transform
        )

    def loss(self, outputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return pinball(outputs, targets["future"])

    def metrics(
        self, outputs: np.ndarray, targets: dict[str, np.ndarray], label_names: list[str]
    ) -> dict[str, Any]:
        truth, naive = targets["future"], targets["naive"]
        mae = float(np.abs(outputs[..., 1] - truth).mean())
        mae_naive = float(np.abs(naive - truth).mean())
        q = np.asarray(QUANTILES)
        err = truth[..., None] - outputs
        return {
            "skill": 1 - mae / mae_naive if mae_naive > 0 else 0.0,
            "mae_std_units": mae,
            "pinball": float(np.maximum(q * err, (q - 1) * err).mean()),
            "coverage_p10_p90": float(((outputs[..., 0] <= truth) & (truth <= outputs[..., 2])).mean()),
            "n": len(truth),
        }

    def parity(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
        """Quantiles are values, not scores of classes: the tolerance alone decides."""
        return {"max_abs_diff": max_abs_diff(reference, candidate)}

    def after_fit(self, model: nn.Module, splits: Splits) -> None:
        """Rolling-origin backtest on the held-out tail, in the series' units (reported, decides nothing)."""
        if self.series is None:
            return
        train = self.series[: self.train_end]
        scale = float(
            np.abs(train[WEEK:] - train[:-WEEK]).mean()
        )  # in-sample seasonal-naive MAE (MASE's denominator)
        loc, spread = self.test_loc[:, None, None], self.test_scale[:, None, None]
        truth = splits.test.targets["future"] * spread[..., 0] + loc[..., 0]
        naive = splits.test.targets["naive"] * spread[..., 0] + loc[..., 0]

        def score(outputs: np.ndarray | None, median: np.ndarray) -> dict[str, float]:
            out = {
                "mase": float(np.abs(median - truth).mean() / scale),
                "mae": float(np.abs(median - truth).mean()),
            }
            if outputs is not None:
                out["coverage_p10_p90"] = float(
                    ((outputs[..., 0] <= truth) & (truth <= outputs[..., 2])).mean()
                )
            return out

        batches = list(self.loader(splits.test, shuffle=False, batch_size=256))
        tuned = torch_outputs(model, self, batches)[0] * spread + loc
        backtest: dict[str, Any] = {
            "origins": len(truth),
            "horizon": self.horizon,
            "mase_scale": scale,
            "fine_tuned": score(tuned, tuned[..., 1]),
            "seasonal_naive": score(None, naive),
        }
        if self.pretrained is not None:
            pre = torch_outputs(self.pretrained, self, batches)[0] * spread + loc
            backtest["pretrained_only"] = score(pre, pre[..., 1])
        self.report["backtest"] = backtest
        log.info(
            "%s: backtest MASE fine-tuned %.3f, pretrained-only %s, seasonal-naive %.3f; p10-p90 coverage %.1f%%",
            self.recipe.name,
            backtest["fine_tuned"]["mase"],
            f"{backtest['pretrained_only']['mase']:.3f}" if "pretrained_only" in backtest else "-",
            backtest["seasonal_naive"]["mase"],
            backtest["fine_tuned"]["coverage_p10_p90"] * 100,
        )

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

        loc, spread = self.test_loc[:, None], self.test_scale[:, None]
        path = figures.backtest(
            folder / "backtest.png",
            self.series,
            self.test_origins,
            outputs * spread[..., None] + loc[..., None],
            naive=targets["naive"] * spread + loc,
            context=self.window,
            title=f"{self.recipe.name}: backtest on the test split (skill {metrics['skill']:.3f})",
        )
        return {"backtest": path}

    def preprocessing_config(self) -> dict[str, Any]:
        return {
            "kind": "series",
            "window": self.window,
            "horizon": self.horizon,
            "quantiles": list(QUANTILES),
            "max_gap": MAX_GAP,
            "frequency": "hourly",
            "scaling": "mean and standard deviation of the input window",
        }

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        x = splits.train.inputs["history"][:count]
        return [{"history": x[i : i + 64]} for i in range(0, len(x), 64)]
