"""Series history → the forecaster's input window, and its output back to the series' units.
Shared by training and serving (numpy only).

The model sees the last `window` points of the history, standardised by that window's own mean and
standard deviation (so one model serves series of any level and scale); its quantile outputs are
mapped back with the same two numbers. Missing points (null or NaN) in runs of at most `max_gap`
are linearly interpolated (the nearest value at the edges); longer runs are refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving.errors import InputError

MAX_GAP = 3
MAX_HISTORY = 100_000


class SeriesError(InputError):
    """A history the model cannot take; the message names the position."""


def clean_history(history: Any, window: int, max_gap: int = MAX_GAP) -> tuple[np.ndarray, int]:
    """The last `window` points as float64, gaps interpolated; returns (values, points interpolated)."""
    if not isinstance(history, list):
        raise SeriesError(f"history: expected an array of numbers, got {type(history).__name__}")
    if len(history) < window:
        raise SeriesError(f"history: {len(history)} points; the model needs at least {window}")
    if len(history) > MAX_HISTORY:
        raise SeriesError(f"history: {len(history)} points; at most {MAX_HISTORY}")
    bad = next((i for i, v in enumerate(history) if v is not None and type(v) not in (int, float)), None)
    if bad is not None:  # only the last `window` points are used, but a non-number anywhere is a mistake
        v = history[bad]
        raise SeriesError(
            f"history[{bad}]: expected a number or null, got {type(v).__name__} {str(v)[:30]!r}"
        )
    offset = len(history) - window
    values = np.empty(window, dtype=np.float64)
    missing = np.zeros(window, dtype=bool)
    for i, v in enumerate(history[offset:]):
        if type(v) is int:
            if abs(v) > 1e30:
                raise SeriesError(f"history[{offset + i}]: integer out of range (|x| ≤ 1e30)")
            values[i] = v
        elif type(v) is float:
            if math.isnan(v):
                missing[i] = True
            elif math.isinf(v) or abs(v) > 1e30:
                raise SeriesError(f"history[{offset + i}]: {v} is not a usable number")
            else:
                values[i] = v
        else:  # None
            missing[i] = True
    count = int(missing.sum())
    if count == window:
        raise SeriesError(f"history: the last {window} points are all missing")
    for start, end in missing_runs(missing):
        if end - start > max_gap:
            raise SeriesError(
                f"history[{offset + start}..{offset + end - 1}]: {end - start} missing points in a row; at most {max_gap} are interpolated"
            )
    interpolate(values, missing)
    return values, count


def missing_runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a boolean mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def interpolate(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """In place: missing points linearly interpolated between their neighbours (nearest at the edges)."""
    if missing.any():
        present = np.flatnonzero(~missing)
        values[missing] = np.interp(np.flatnonzero(missing), present, values[present])
    return values


def standardise(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows - loc) / scale as float32, loc and scale being each window's mean and standard
    deviation (last axis; kept as (..., 1) so outputs map back as `y * scale + loc`)."""
    loc = windows.mean(axis=-1, keepdims=True)
    scale = np.maximum(windows.std(axis=-1, keepdims=True), 1e-6 * np.maximum(1.0, np.abs(loc)))
    return ((windows - loc) / scale).astype(np.float32), loc, scale
