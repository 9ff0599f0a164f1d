"""Table rows → model arrays, from the manifest alone; shared by training and serving (numpy only).

A schema is a list of features, each one of:

- `numeric`: standardised with the training mean and standard deviation. `missing: error` makes the
  feature required (absent, null or NaN → a 4xx); `missing: impute` fills the training median and
  sets a 0/1 missing-indicator column the model sees. The training minimum and maximum (`low`,
  `high`) bound what is plausible: with a `range_factor` k, a value further than k times the observed
  range outside it is refused, since a model extrapolates such inputs into confident nonsense.
- `categorical`: an index into the training vocabulary; index 0 is `<unknown>`, where values never
  seen in training go (never an error). With `missing: impute`, absent/null values get `<missing>`.
- `boolean`: 0/1 (JSON true/false or 0/1); `missing: impute` fills the training rate of true.

The model takes `numeric` (float32: numeric and boolean features, then missing indicators) and, when
the schema has categorical features, `categorical` (int64 indices). `fit_schema` computes the
statistics on training data; `infer_kinds` guesses each CSV column's kind (editable in the recipe).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from serving.errors import InputError
from serving.processing.explain import FeatureColumns

UNKNOWN, MISSING = "<unknown>", "<missing>"
MAX_ROWS = 1000
TRUE_WORDS = {"true", "yes", "y", "t"}
FALSE_WORDS = {"false", "no", "n", "f"}
_ABSENT = object()


class RowError(InputError):
    """A row the model cannot take; the message names the row and the column."""


@dataclass
class Feature:
    name: str
    kind: Literal["numeric", "categorical", "boolean"]
    missing: Literal["error", "impute"] = "error"
    mean: float = 0.0
    std: float = 1.0
    fill: float = 0.0  # imputed value (numeric: training median; boolean: training rate of true)
    vocabulary: list[str] = field(default_factory=list)  # categorical: index 0 is <unknown>
    low: float | None = None  # numeric: smallest and largest training value (None in older manifests)
    high: float | None = None

    def accepted(self, factor: float) -> tuple[float, float] | None:
        """The plausible range of a numeric feature: the training range widened by `factor` times its
        width on each side (at least `factor` on a constant feature); None when unbounded."""
        if self.kind != "numeric" or self.low is None or self.high is None or factor <= 0:
            return None
        span = max(self.high - self.low, 1.0 if self.high == self.low else 0.0)
        return self.low - factor * span, self.high + factor * span

    @property
    def required(self) -> bool:
        return self.missing == "error"


def _describe(value: Any) -> str:
    kind = {bool: "boolean", str: "string", list: "array", dict: "object", type(None): "null"}.get(
        type(value), type(value).__name__
    )
    shown = repr(value) if not isinstance(value, (list, dict)) else ""
    return f"{kind} {shown[:40]}".strip()


class RowEncoder:
    """Validates JSON rows against the schema and encodes them; every error names row and column."""

    def __init__(self, features: list[Feature], max_rows: int = MAX_ROWS, range_factor: float = 0.0) -> None:
        self.features = features
        self.max_rows = max_rows
        self.range_factor = range_factor  # 0: no plausibility check (training encodes its own data)
        self.names = [f.name for f in features]
        self._known = set(self.names)
        self._required = {f.name for f in features if f.required}
        self.dense = [f for f in features if f.kind != "categorical"]
        self.imputed = [f for f in self.dense if f.missing == "impute"]
        self.categorical = [f for f in features if f.kind == "categorical"]
        self._index = [{word: i for i, word in enumerate(f.vocabulary)} for f in self.categorical]

    @classmethod
    def from_config(cls, config: dict[str, Any], range_factor: float = 0.0) -> RowEncoder:
        return cls(
            [Feature(**f) for f in config["features"]], int(config.get("max_rows", MAX_ROWS)), range_factor
        )

    def config(self) -> dict[str, Any]:
        return {"features": [asdict(f) for f in self.features], "max_rows": self.max_rows}

    @property
    def input_names(self) -> list[str]:
        return ["numeric", "categorical"] if self.categorical else ["numeric"]

    @property
    def numeric_width(self) -> int:
        return len(self.dense) + len(self.imputed)

    @property
    def cardinalities(self) -> list[int]:
        return [len(f.vocabulary) for f in self.categorical]

    def feature_columns(self) -> list[FeatureColumns]:
        """Where each feature lives in the encoded arrays (its value and missing-indicator columns)."""
        out = []
        for f in self.features:
            if f.kind == "categorical":
                columns = [("categorical", self.categorical.index(f))]
            else:
                columns = [("numeric", self.dense.index(f))]
                if f.missing == "impute":
                    columns.append(("numeric", len(self.dense) + self.imputed.index(f)))
            out.append(FeatureColumns(f.name, tuple(columns)))
        return out

    def check_rows(self, rows: Any) -> list[dict]:
        if not isinstance(rows, list):
            raise RowError(f"rows: expected an array of objects, got {_describe(rows)}")
        if not rows:
            raise RowError("rows: empty; send at least one row")
        if len(rows) > self.max_rows:
            raise RowError(f"rows: {len(rows)} rows; at most {self.max_rows} per request")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise RowError(f"rows[{i}]: expected an object of feature values, got {_describe(row)}")
            unknown = row.keys() - self._known
            if unknown:
                raise RowError(
                    f"rows[{i}]: unknown feature(s) {sorted(unknown)}; the model takes {self.names}"
                )
            absent = self._required - row.keys()
            if absent:
                raise RowError(f"rows[{i}]: missing required feature(s) {sorted(absent)}")
        return rows

    def encode(self, rows: Any) -> dict[str, np.ndarray]:
        """JSON rows → {"numeric": float32 (n, width), "categorical": int64 (n, k)}; raises RowError."""
        rows = self.check_rows(rows)
        n = len(rows)
        numeric = np.empty((n, self.numeric_width), dtype=np.float32)
        for j, f in enumerate(self.dense):
            column = [row.get(f.name, _ABSENT) for row in rows]
            values, missing = (self._numbers if f.kind == "numeric" else self._booleans)(f, column)
            if f.kind == "numeric":
                values = (values - f.mean) / f.std
            numeric[:, j] = values
            if f.missing == "impute":
                numeric[:, len(self.dense) + self.imputed.index(f)] = missing
        out: dict[str, np.ndarray] = {"numeric": numeric}
        if self.categorical:
            codes = np.empty((n, len(self.categorical)), dtype=np.int64)
            for j, (f, index) in enumerate(zip(self.categorical, self._index)):
                codes[:, j] = [
                    self._category(f, index, i, row.get(f.name, _ABSENT)) for i, row in enumerate(rows)
                ]
            out["categorical"] = codes
        return out

    def encode_all(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Any number of rows (training data), encoded `max_rows` at a time."""
        parts = [self.encode(rows[i : i + self.max_rows]) for i in range(0, len(rows), self.max_rows)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    @staticmethod
    def _is_missing(value: Any) -> bool:
        return value is _ABSENT or value is None or (isinstance(value, float) and math.isnan(value))

    def _missing(self, f: Feature, i: int, value: Any) -> None:
        if f.required:
            what = (
                "missing required feature"
                if value is _ABSENT
                else f"{'NaN' if isinstance(value, float) else 'null'} is not allowed (the feature is required)"
            )
            raise RowError(f"rows[{i}].{f.name}: {what}")

    def _numbers(self, f: Feature, column: list) -> tuple[np.ndarray, np.ndarray]:
        values = np.empty(len(column), dtype=np.float64)
        missing = np.zeros(len(column), dtype=np.float32)
        for i, value in enumerate(column):
            if type(value) is int:
                if abs(value) > 1e30:
                    raise RowError(f"rows[{i}].{f.name}: integer out of range (|x| ≤ 1e30)")
                values[i] = value
            elif type(value) is float and math.isfinite(value):
                values[i] = value
            elif self._is_missing(value):
                self._missing(f, i, value)
                values[i], missing[i] = f.fill, 1.0
            elif isinstance(value, float):
                raise RowError(f"rows[{i}].{f.name}: {value} is not a finite number")
            else:
                raise RowError(f"rows[{i}].{f.name}: expected a number, got {_describe(value)}")
        if np.abs(values).max(initial=0.0) > 1e30:
            i = int(np.abs(values).argmax())
            raise RowError(f"rows[{i}].{f.name}: {values[i]:g} is out of range")
        bounds = f.accepted(self.range_factor)
        if bounds is not None:
            outside = np.flatnonzero((values < bounds[0]) | (values > bounds[1]))
            if outside.size:
                i = int(outside[0])
                raise RowError(
                    f"rows[{i}].{f.name}: {values[i]:g} is implausible: training saw {f.low:g} to {f.high:g}, "
                    f"and values from {bounds[0]:g} to {bounds[1]:g} are accepted"
                )
        return values, missing

    def _booleans(self, f: Feature, column: list) -> tuple[np.ndarray, np.ndarray]:
        values = np.empty(len(column), dtype=np.float64)
        missing = np.zeros(len(column), dtype=np.float32)
        for i, value in enumerate(column):
            if value is True or value is False or (type(value) is int and value in (0, 1)):
                values[i] = float(value)
            elif self._is_missing(value):
                self._missing(f, i, value)
                values[i], missing[i] = f.fill, 1.0
            else:
                raise RowError(f"rows[{i}].{f.name}: expected true or false, got {_describe(value)}")
        return values, missing

    def _category(self, f: Feature, index: dict[str, int], i: int, value: Any) -> int:
        if isinstance(value, str):
            return index.get(value, 0)
        if type(value) is int:  # codes sent as numbers (e.g. 3 for "3")
            return index.get(str(value), 0)
        if self._is_missing(value):
            self._missing(f, i, value)
            return index.get(MISSING, 0)
        raise RowError(f"rows[{i}].{f.name}: expected a string category, got {_describe(value)}")


# --- fitting (training side; numpy only, so it lives beside its use) -------------------------------


def parse_cell(kind: str, text: str | None) -> Any:
    """A CSV cell → the JSON value a client would send for it (None when empty)."""
    if text is None or text.strip() == "" or text.strip().lower() in ("na", "nan", "null"):
        return None
    text = text.strip()
    if kind == "numeric":
        return float(text)
    if kind == "boolean":
        low = text.lower()
        return low in TRUE_WORDS or low == "1"
    return text


def infer_kinds(columns: dict[str, list[str | None]], max_categories: int = 200) -> dict[str, str | None]:
    """Each CSV column's kind from its text: numbers → numeric (two values 0/1 → boolean), yes/no-like
    words → boolean, few distinct strings → categorical, identifier-like columns → None (dropped)."""
    kinds: dict[str, str | None] = {}
    for name, cells in columns.items():
        present = {
            c.strip()
            for c in cells
            if c is not None and c.strip() != "" and c.strip().lower() not in ("na", "nan", "null")
        }
        if not present:
            kinds[name] = None
            continue
        try:
            numbers = {float(c) for c in present}
        except ValueError:
            numbers = None
        if numbers is not None:
            kinds[name] = "boolean" if numbers <= {0.0, 1.0} and len(numbers) == 2 else "numeric"
        elif {c.lower() for c in present} <= TRUE_WORDS | FALSE_WORDS and len(present) == 2:
            kinds[name] = "boolean"
        elif len(present) <= max(max_categories, 0) and len(present) < 0.5 * len(cells):
            kinds[name] = "categorical"
        else:
            kinds[name] = None  # free text or identifiers: not a feature
    return kinds


def fit_feature(
    name: str,
    kind: str,
    values: Iterable[Any],
    missing: Literal["error", "impute"] | None = None,
    min_count: int = 1,
) -> Feature:
    """Statistics of one feature from training values (parsed JSON-like values, None for missing)."""
    values = list(values)
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    has_missing = len(present) < len(values)
    policy: Literal["error", "impute"] = missing or ("impute" if has_missing else "error")
    if kind == "numeric":
        arr = np.asarray(present, dtype=np.float64)
        std = float(arr.std()) if arr.size else 1.0
        return Feature(
            name,
            "numeric",
            policy,
            mean=float(arr.mean()) if arr.size else 0.0,
            std=std if std > 1e-12 else 1.0,
            fill=float(np.median(arr)) if arr.size else 0.0,
            low=float(arr.min()) if arr.size else None,
            high=float(arr.max()) if arr.size else None,
        )
    if kind == "boolean":
        rate = float(np.mean([bool(v) for v in present])) if present else 0.0
        return Feature(name, "boolean", policy, fill=rate)
    if kind == "categorical":
        counts: dict[str, int] = {}
        for v in present:
            counts[str(v)] = counts.get(str(v), 0) + 1
        words = sorted(w for w, c in counts.items() if c >= min_count)
        vocabulary = [UNKNOWN] + ([MISSING] if policy == "impute" else []) + words
        return Feature(name, "categorical", policy, vocabulary=vocabulary)
    raise ValueError(f"feature {name!r}: unknown kind {kind!r} (numeric, categorical or boolean)")
