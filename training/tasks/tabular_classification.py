"""Tabular classification: a feature schema inferred from the CSV (editable in the recipe), an MLP over
standardised numbers and categorical embeddings, class-imbalance weighting, temperature scaling and a
decision threshold chosen on the validation split (never on test), and a gradient-boosting baseline
in the report. Recipe `preprocessing` keys: `TabularPreprocessing`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader

from serving.errors import InputError
from serving.processing.postprocess import softmax
from serving.processing.tabular import RowEncoder, fit_feature, infer_kinds, parse_cell
from serving.processing.transactions import DERIVED, NUMERIC_DERIVED, derive_columns, parse_time
from training.augment import mixup, tabular_noise
from training.data.arrays import ArrayExamples, array_loader
from training.data.tables import read_csv_columns, resolve_table
from training.tasks.base import Preprocessing, Splits, Task

log = logging.getLogger(__name__)


class TabularMLP(nn.Module):
    """Embeddings for categorical columns, concatenated with the numeric columns, through an MLP.
    `logit_adjust` undoes the prior shift of class weighting and `temperature` calibrates; both are
    set after training and exported inside the graph, so served probabilities are calibrated."""

    # buffers registered in __init__ (nn.Module's own type gives attributes as a tensor or a module)
    logit_adjust: torch.Tensor
    temperature: torch.Tensor
    stack: torch.Tensor

    def __init__(
        self, numeric_width: int, cardinalities: list[int], num_labels: int, hidden: list[int], dropout: float
    ) -> None:
        super().__init__()
        dims = [min(16, max(2, round(1.6 * c**0.56))) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, dims))
        layers: list[nn.Module] = []
        width = numeric_width + sum(dims)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_labels)
        self.register_buffer("logit_adjust", torch.zeros(num_labels))
        self.register_buffer("temperature", torch.ones(1))

        # With an anomaly detector (fraud), once fitted: a noisy-OR of two calibrated alarms, the
        # MLP's (p1 = σ(stack[0]·log-odds + stack[1])) and the detector's (p2 = σ(stack[2]·score +
        # stack[3])): p = 1 − (1 − p1)(1 − p2), so a transaction unlike normal traffic can raise an
        # alert the MLP, trained on known fraud only, would veto in an additive combination.
        self.anomaly: Autoencoder | None = None
        self.register_buffer("stack", torch.tensor([1.0, 0.0, 0.0, -80.0]))
        self.positive = 1
        self.combined = False

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor | None = None) -> torch.Tensor:
        parts = [numeric]
        if categorical is not None:
            parts += [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        logits = (self.head(self.body(torch.cat(parts, dim=1))) - self.logit_adjust) / self.temperature
        if self.anomaly is None or not self.combined:
            return logits
        pos = self.positive
        u1 = (self.stack[0] * (logits[:, pos] - logits[:, 1 - pos]) + self.stack[1]).clamp(-80, 80)
        u2 = (self.stack[2] * self.anomaly(numeric, categorical) + self.stack[3]).clamp(-80, 80)
        # log p − log(1 − p) in log space only (ONNX Runtime's Sigmoid saturates far from 0, so
        # σ(−80) cannot be taken literally): log(1 − p) = −softplus(u1) − softplus(u2), and
        # p = σ(u1) + σ(u2)·σ(−u1), whose log is a log-add-exp of −softplus(−u1) and
        # −softplus(−u2) − softplus(u1).
        softplus = nn.functional.softplus
        a, b = -softplus(-u1), -softplus(-u2) - softplus(u1)
        log_p = torch.maximum(a, b) + torch.log(1 + torch.exp(-torch.abs(a - b)))
        log_odds = log_p + softplus(u1) + softplus(u2)
        half = log_odds / 2
        return torch.stack([-half, half] if pos == 1 else [half, -half], dim=1)


class Autoencoder(nn.Module):
    """Reconstructs the encoded row (standardised numbers, one-hot categories); the anomaly score is
    the log of the mean squared reconstruction error, centred and scaled on normal validation rows
    (0 ≈ a typical normal row, each unit one standard deviation of normal rows' scores)."""

    center: torch.Tensor
    scale: torch.Tensor

    def __init__(self, numeric_width: int, cardinalities: list[int], hidden: int = 32, code: int = 8) -> None:
        super().__init__()
        self.onehots = nn.ModuleList(
            nn.Embedding.from_pretrained(torch.eye(c), freeze=True) for c in cardinalities
        )
        width = numeric_width + sum(cardinalities)
        self.net = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, code),
            nn.ReLU(),
            nn.Linear(code, hidden),
            nn.ReLU(),
            nn.Linear(hidden, width),
        )
        self.register_buffer("center", torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))

    def errors(self, numeric: torch.Tensor, categorical: torch.Tensor | None = None) -> torch.Tensor:
        parts = [numeric]
        if categorical is not None:
            parts += [emb(categorical[:, j]) for j, emb in enumerate(self.onehots)]
        x = torch.cat(parts, dim=1)
        return ((self.net(x) - x) ** 2).mean(dim=1)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor | None = None) -> torch.Tensor:
        return (torch.log(self.errors(numeric, categorical) + 1e-4) - self.center) / self.scale


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising validation negative log-likelihood (golden-section on log T)."""

    def nll(log_t: float) -> float:
        probs = softmax(logits / np.exp(log_t))
        return float(-np.log(np.clip(probs[np.arange(len(targets)), targets], 1e-12, None)).mean())

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if nll(a) < nll(b) else (a, hi)
    return float(np.exp((lo + hi) / 2))


def choose_threshold(p_positive: np.ndarray, positive: np.ndarray, objective: str) -> float:
    """The probability cut-off that maximises `objective` on validation (ties: the middle one)."""
    candidates = np.unique(np.concatenate([np.quantile(p_positive, np.linspace(0, 1, 201)), [0.5]]))
    scores = []
    for c in candidates:
        guess = p_positive >= c
        if objective == "accuracy":
            scores.append(float((guess == positive).mean()))
        elif objective == "youden":
            tpr = guess[positive].mean() if positive.any() else 0.0
            fpr = guess[~positive].mean() if (~positive).any() else 0.0
            scores.append(float(tpr - fpr))
        else:
            scores.append(float(f1_score(positive, guess, zero_division=0)))
    best = np.flatnonzero(np.isclose(scores, max(scores)))
    return float(candidates[best[len(best) // 2]])


def binary_metrics(p_positive: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    guess = p_positive >= threshold
    two = np.stack([1 - p_positive, p_positive], 1)
    return {
        "roc_auc": float(roc_auc_score(positive, p_positive))
        if 0 < positive.sum() < len(positive)
        else float("nan"),
        "pr_auc": float(average_precision_score(positive, p_positive)),
        "brier": float(np.mean((p_positive - positive) ** 2)),
        "log_loss": float(log_loss(positive, np.clip(two, 1e-12, 1), labels=[False, True])),
        "accuracy": float((guess == positive).mean()),
        "f1": float(f1_score(positive, guess, zero_division=0)),
        "recall": float(guess[positive].mean()) if positive.any() else float("nan"),
        "precision": float(positive[guess].mean()) if guess.any() else float("nan"),
        "flagged_rate": float(guess.mean()),
        "threshold": float(threshold),
        "n": len(positive),
    }


def budget_threshold(val_scores: np.ndarray, alert_rate: float) -> float:
    """The score above which `alert_rate` of the validation rows lie: an alert queue of that size."""
    return float(np.quantile(val_scores, 1 - alert_rate))


def ranking_metrics(
    scores: np.ndarray, positive: np.ndarray, threshold: float, holdout: np.ndarray | None
) -> dict[str, float]:
    """Scores of any scale (an anomaly score, a baseline's) at an alert threshold: PR-AUC, ROC-AUC,
    recall and precision of the alerts, the share of rows alerted, and recall on held-out rows."""
    alerts = scores >= threshold
    out = {
        "pr_auc": float(average_precision_score(positive, scores)),
        "roc_auc": float(roc_auc_score(positive, scores))
        if 0 < positive.sum() < len(positive)
        else float("nan"),
        "recall_at_alert_budget": float(alerts[positive].mean()) if positive.any() else float("nan"),
        "precision_at_alert_budget": float(positive[alerts].mean()) if alerts.any() else float("nan"),
        "flagged_rate": float(alerts.mean()),
    }
    if holdout is not None and holdout.any():
        out["holdout_recall"] = float(alerts[holdout].mean())
        out["holdout_n"] = int(holdout.sum())
    return out


class FeatureOverride(BaseModel):
    """A column's entry in `preprocessing.features`: what the inferred schema gets wrong."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["numeric", "categorical", "boolean"] | None = None
    missing: Literal["error", "impute"] | None = Field(
        None, description="default: impute when the training column has gaps, else error"
    )


class TransactionFields(BaseModel):
    """The raw transaction fields the card-velocity features are computed from
    (serving/processing/transactions.py)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["card-velocity"] = "card-velocity"
    card: str = "card_id"
    time: str = "timestamp"
    amount: str = "amount"
    country: str = "country"
    home_country: str = "home_country"


class Holdout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="a column that is never a feature (e.g. the fraud pattern)")
    values: list[str] = Field(min_length=1)


class TabularPreprocessing(Preprocessing):
    model_config = ConfigDict(
        coerce_numbers_to_str=True
    )  # CSV labels are text: `positive_label: 1` names "1"

    target: str | None = Field(None, description="the column to predict (data.target takes precedence)")
    features: dict[str, FeatureOverride] = Field(
        default_factory=dict, description="overrides of the schema inferred from the CSV"
    )
    exclude: list[str] = Field(default_factory=list, description="columns that are not features")
    min_category_count: int = Field(1, ge=1, description="rarer categories map to <unknown>")
    class_weight: Literal["balanced", "none"] = "balanced"
    positive_label: str | None = Field(
        None, description="binary: the positive class (default: the rarer one)"
    )
    threshold_objective: Literal["f1", "accuracy", "youden"] = Field(
        "f1", description="what the validation-chosen threshold maximises"
    )
    hidden: list[int] = Field(default_factory=lambda: [128, 64], description="MLP layer widths")
    mixup: float = Field(0.0, ge=0, description="Beta α of mixup on numeric features and targets; 0 = off")
    derive: TransactionFields | None = Field(
        None, description="raw card transactions: history features computed from the stream (serving too)"
    )
    split: Literal["stratified", "time"] = Field(
        "stratified", description="time: train on the past, validate and test on the future"
    )
    time_column: str | None = Field(None, description="split by this column's times (default: derive.time)")
    holdout: Holdout | None = Field(
        None, description="rows kept out of training and validation, scored separately on test"
    )
    anomaly: bool = Field(
        False, description="binary: add an autoencoder trained on negative rows, combined on validation"
    )
    anomaly_epochs: int = Field(8, ge=1, description="autoencoder epochs")
    alert_rate: float | None = Field(
        None, gt=0, lt=0.5, description="binary: threshold = the score alerting this share of validation rows"
    )
    background_rows: int = Field(
        32, ge=1, le=256, description="training rows stored in the manifest as the explanations' background"
    )
    # augment_strength: Gaussian noise on the standardised numeric features


class _AnomalySignature:
    """The ONNX signature of the anomaly detector exported on its own (anomaly.onnx)."""

    output_names: ClassVar[list[str]] = ["anomaly"]

    def __init__(self, input_names: list[str]) -> None:
        self.input_names = input_names
        self.dynamic_axes = {name: {0: "batch"} for name in [*input_names, "anomaly"]}


class TabularClassificationTask(Task[TabularPreprocessing]):
    name = "tabular-classification"
    modality = "tabular"
    metric = "roc_auc"
    output_names: ClassVar[list[str]] = ["logits"]
    preprocessing_model = TabularPreprocessing

    def __init__(self, recipe, backbone) -> None:
        super().__init__(recipe, backbone)
        self.encoder: RowEncoder | None = None
        self.num_labels: int | None = None  # for mixup's one-hot targets; unknown after `restore`
        self.positive: int | None = None
        self.threshold = 0.5
        self.class_weights: np.ndarray | None = None
        self.holdout_test: tuple[int, np.ndarray] | None = None  # (test rows, which are held out)
        self.background: list[dict[str, Any]] = []
        self.anomaly_file: Path | None = None

    @property
    def fitted_encoder(self) -> RowEncoder:
        """The row encoder that `load_data` fits (or `restore` rebuilds), which every later stage needs."""
        assert self.encoder is not None, "the encoder is set by load_data or restore"
        return self.encoder

    # ONNX signature: `categorical` only when the schema has categorical features
    @property
    def input_names(self) -> list[str]:
        return self.fitted_encoder.input_names

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch"} for name in [*self.input_names, "logits"]}

    def load_data(self) -> Splits:
        d = self.recipe.data
        path = resolve_table(d.source, d.seed)
        columns = read_csv_columns(path)
        target = d.target or self.options.target
        if target is None or target not in columns:
            raise ValueError(
                f"{path}: target column {target!r} not found; columns: {list(columns)} (set data.target or --target)"
            )
        labels_text = columns.pop(target)
        keep = np.array([v is not None for v in labels_text])
        if not keep.all():
            log.warning("%s: %d rows without a %s value dropped", path, int((~keep).sum()), target)
        label_names = self.recipe.labels or sorted({v for v in labels_text if v is not None})
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({v for v in labels_text if v is not None} - set(index))
        if unknown:
            raise ValueError(
                f"{path}: target values {unknown[:5]} are not among the recipe's labels {label_names}"
            )
        y = np.array([index[v] for v in np.asarray(labels_text, dtype=object)[keep]], dtype=np.int64)
        if len(label_names) < 2:
            raise ValueError(f"{path}: the target {target!r} has a single class")
        self.num_labels = len(label_names)

        group = None
        holdout = self.options.holdout
        if holdout is not None:
            if holdout.column not in columns:
                raise ValueError(
                    f"{path}: holdout column {holdout.column!r} not found; columns: {list(columns)}"
                )
            group = np.asarray(columns.pop(holdout.column), dtype=object)[keep].astype(str)
        derived: dict[str, list[Any]] = {}
        seconds = None
        if self.options.derive is not None:
            derived, seconds = self._derive(path, columns)
        elif self.options.split == "time":
            seconds = self._times(path, columns, self.options.time_column)

        exclude = set(self.options.exclude)
        overrides = self.options.features
        kinds = infer_kinds({k: v for k, v in columns.items() if k not in exclude})
        kinds |= {name: "numeric" if name in NUMERIC_DERIVED else "boolean" for name in derived}
        for name, spec in overrides.items():
            if name not in columns:  # e.g. the recipe's own data differs from a user's file
                log.warning(
                    "recipe preprocessing.features names %r, which is not a column of %s; ignored", name, path
                )
                continue
            if spec.kind is not None:
                kinds[name] = spec.kind
        dropped = [k for k, v in kinds.items() if v is None]
        if dropped:
            log.warning(
                "%s: columns %s are not used as features (identifier-like, free text or empty)", path, dropped
            )
        feature_kinds = {k: v for k, v in kinds.items() if v is not None}
        names = list(feature_kinds)
        if not names:
            raise ValueError(f"{path}: no usable feature columns")
        try:
            parsed = {
                k: [parse_cell(feature_kinds[k], c) for c, ok in zip(columns[k], keep) if ok]
                for k in names
                if k not in derived
            }
            parsed |= {k: [v for v, ok in zip(derived[k], keep) if ok] for k in derived}
        except ValueError as exc:
            raise ValueError(
                f"{path}: {exc} (a column's kind in the recipe does not fit its cells)"
            ) from None

        n = len(y)
        if self.options.split == "time":
            assert seconds is not None
            order = np.argsort(seconds[keep], kind="stable")[: d.limit]  # the earliest `limit` rows
            n_test, n_val = round(len(order) * d.test_fraction), round(len(order) * d.val_fraction)
            train = order[: len(order) - n_val - n_test]
            val, test = order[len(train) : len(order) - n_test], order[len(order) - n_test :]
        else:
            all_rows = np.arange(n)
            if d.limit is not None and d.limit < n:
                all_rows, _ = train_test_split(all_rows, train_size=d.limit, random_state=d.seed, stratify=y)
            rest, test = train_test_split(
                all_rows, test_size=d.test_fraction, random_state=d.seed, stratify=y[all_rows]
            )
            train, val = train_test_split(
                rest, test_size=d.val_fraction / (1 - d.test_fraction), random_state=d.seed, stratify=y[rest]
            )
        if group is not None and holdout is not None:
            held = np.isin(group, holdout.values)
            train, val = train[~held[train]], val[~held[val]]
            if len(val) == len(test):  # `metrics` tells the test split by its length
                val = val[1:]
            self.holdout_test = (len(test), held[test])
            log.info(
                "holdout %s=%s: %d training and validation rows left out, %d in test",
                holdout.column,
                holdout.values,
                int(held.sum() - held[test].sum()),
                int(held[test].sum()),
            )

        features = []
        for k in names:
            policy: Literal["error", "impute"] = (overrides[k].missing if k in overrides else None) or (
                "impute" if any(v is None for v in parsed[k]) else "error"
            )
            features.append(
                fit_feature(
                    k,
                    feature_kinds[k],
                    (parsed[k][i] for i in train),
                    missing=policy,
                    min_count=self.options.min_category_count,
                )
            )
        self.encoder = RowEncoder(features)
        rows = [dict(zip(names, values)) for values in zip(*(parsed[k] for k in names))]
        encoded = self.encoder.encode_all(rows)
        pick = np.random.default_rng(d.seed).choice(
            train, size=min(self.options.background_rows, len(train)), replace=False
        )
        self.background = [rows[i] for i in sorted(pick)]

        counts = np.bincount(y[train], minlength=len(label_names)).astype(np.float64)
        if self.options.class_weight == "balanced":
            self.class_weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
        if len(label_names) == 2:
            positive = self.options.positive_label
            if positive is not None and positive not in index:  # a user's file with other labels
                log.warning(
                    "positive_label %r is not a label of %s (%s); using the rarer class",
                    positive,
                    path,
                    label_names,
                )
                positive = None
            self.positive = index[positive] if positive is not None else int(counts.argmin())
        arrays = ArrayExamples(encoded, y)
        return Splits(arrays.subset(train), arrays.subset(val), arrays.subset(test), label_names)

    def _derive(
        self, path: Path, columns: dict[str, list[str | None]]
    ) -> tuple[dict[str, list[Any]], np.ndarray]:
        """The card-velocity features of the whole stream (serving computes them the same way from a
        request's rows); the card and time columns are consumed. Also returns the times in seconds."""
        fields = self.options.derive
        assert fields is not None
        absent = [c for c in (fields.card, fields.time, fields.amount) if c not in columns]
        if absent:
            raise ValueError(f"{path}: preprocessing.derive names columns {absent} that are not in the file")
        n = len(columns[fields.card])
        for name in (fields.card, fields.amount):
            empty = [i for i, c in enumerate(columns[name]) if c is None]
            if empty:
                raise ValueError(f"{path}:{empty[0] + 2}: empty {name!r}; every transaction needs one")
        try:
            amounts = np.array([float(c) for c in columns[fields.amount]])  # type: ignore[arg-type]
            seconds = self._times(path, columns, fields.time)
            derived = derive_columns(
                [str(c) for c in columns.pop(fields.card)],
                columns.pop(fields.time),
                amounts,
                columns.get(fields.country, [None] * n),
                columns.get(fields.home_country, [None] * n),
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        log.info("%s: %s computed from %d transactions", path.name, ", ".join(DERIVED), n)
        return derived, seconds

    @staticmethod
    def _times(path: Path, columns: dict[str, list[str | None]], name: str | None) -> np.ndarray:
        if name is None or name not in columns:
            raise ValueError(
                f"{path}: split: time needs a time column (preprocessing.time_column); got {name!r}"
            )
        try:
            return np.array([parse_time(c, f"row {i + 2}.{name}")[0] for i, c in enumerate(columns[name])])
        except InputError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def restore(self, preprocessing: dict[str, Any]) -> None:
        self.encoder = RowEncoder.from_config(preprocessing)
        self.num_labels = None
        self.positive = preprocessing.get("positive_index")
        self.threshold = float(preprocessing.get("threshold", 0.5))

    def build_model(self, label_names: list[str]) -> nn.Module:
        encoder = self.fitted_encoder
        model = TabularMLP(
            encoder.numeric_width,
            encoder.cardinalities,
            len(label_names),
            self.options.hidden,
            self.recipe.train.dropout,
        )
        if self.options.anomaly:
            if len(label_names) != 2:
                raise ValueError(f"recipe {self.recipe.name!r}: preprocessing.anomaly needs a binary target")
            model.anomaly = Autoencoder(encoder.numeric_width, encoder.cardinalities)
        return model

    def loader(self, split: ArrayExamples, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        strength, alpha = self.options.augment_strength, self.options.mixup
        transform = None
        if shuffle and (strength > 0 or alpha > 0):
            rng = np.random.default_rng(self.recipe.train.seed)
            numeric_columns = [j for j, f in enumerate(self.fitted_encoder.dense) if f.kind == "numeric"]
            classes = self.num_labels

            def transform(inputs, targets):
                inputs = dict(
                    inputs, numeric=tabular_noise(inputs["numeric"], numeric_columns, strength, rng)
                )
                return mixup(inputs, targets, classes, alpha, rng) if alpha > 0 else (inputs, targets)

        return array_loader(
            split, batch_size or self.recipe.train.batch_size, shuffle, self.recipe.train.seed, transform
        )

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = (
            None if self.class_weights is None else torch.as_tensor(self.class_weights, dtype=logits.dtype)
        )
        return nn.functional.cross_entropy(logits, targets, weight=weight)

    def metrics(self, logits: np.ndarray, targets: np.ndarray, label_names: list[str]) -> dict[str, Any]:
        probs = softmax(logits)
        labels = list(range(len(label_names)))
        if self.positive is not None:
            p_positive = probs[:, self.positive].astype(np.float64)
            out = binary_metrics(p_positive, targets == self.positive, self.threshold)
            if self.options.alert_rate is not None:
                out["recall_at_alert_budget"] = out["recall"]
                out["precision_at_alert_budget"] = out["precision"]
            held = self._held(len(targets))
            if held is not None and held.any():
                out["holdout_recall"] = float((p_positive >= self.threshold)[held].mean())
                out["holdout_n"] = int(held.sum())
            # the served decision: the positive class at or above the threshold, else the other one
            predicted = np.where(p_positive >= self.threshold, self.positive, 1 - self.positive)
        else:
            onehot = np.eye(len(label_names))[targets]
            predicted = probs.argmax(1)
            out = {
                "roc_auc": float(roc_auc_score(targets, probs, multi_class="ovr", labels=labels)),
                "brier": float(((probs - onehot) ** 2).sum(1).mean()),
                "log_loss": float(log_loss(targets, np.clip(probs, 1e-12, 1), labels=labels)),
                "accuracy": float(accuracy_score(targets, predicted)),
                "n": len(targets),
            }
        out["confusion_matrix"] = confusion_matrix(targets, predicted, labels=labels).tolist()
        return out

    def figures(
        self, folder: Path, outputs: np.ndarray, targets: np.ndarray, splits: Splits, metrics: dict[str, Any]
    ) -> dict[str, Path]:
        """The confusion matrix at the served decision rule; binary tasks add ROC and precision-recall
        curves of the positive class with the validation-chosen threshold marked."""
        from training import figures

        drawn = super().figures(folder, outputs, targets, splits, metrics)
        if self.positive is not None:
            drawn["roc_pr"] = figures.roc_pr_curves(
                folder / "roc_pr.png",
                softmax(outputs)[:, self.positive],
                targets == self.positive,
                self.threshold,
                title=f"{self.recipe.name}: test split, positive class {splits.label_names[self.positive]!r}",
            )
        return drawn

    def after_fit(self, model: nn.Module, splits: Splits) -> None:
        """Undo the class weighting's prior shift, fit the temperature on validation; with `anomaly`,
        train the autoencoder and combine it with the MLP on validation; then the threshold (the
        objective's best, or the alert budget's), and the baselines on the same split."""
        from training.evaluate import torch_outputs

        mlp = cast(TabularMLP, model)  # the module build_model made
        if self.class_weights is not None:
            mlp.logit_adjust.copy_(torch.as_tensor(np.log(self.class_weights), dtype=torch.float32))
        raw, targets = torch_outputs(model, self, self.loader(splits.val, shuffle=False, batch_size=1024))
        before = float(
            log_loss(targets, np.clip(softmax(raw), 1e-12, 1), labels=list(range(len(splits.label_names))))
        )
        temperature = fit_temperature(raw, targets)
        mlp.temperature.fill_(temperature)
        probs = softmax(raw / temperature)
        after = float(
            log_loss(targets, np.clip(probs, 1e-12, 1), labels=list(range(len(splits.label_names))))
        )
        objective = self.options.threshold_objective
        calibration: dict[str, float | str] = {
            "temperature": temperature,
            "val_log_loss_before": before,
            "val_log_loss_after": after,
        }
        if self.options.anomaly and self.positive is not None:
            self.report["anomaly"] = self._fit_anomaly(mlp, splits)
            probs, _ = torch_outputs(model, self, self.loader(splits.val, shuffle=False, batch_size=1024))
            probs = softmax(probs)
        rate = self.options.alert_rate
        if self.positive is not None:
            p_val = probs[:, self.positive].astype(np.float64)
            if rate is not None:
                self.threshold = budget_threshold(p_val, rate)
                calibration |= {"threshold": self.threshold, "alert_rate": rate}
            else:
                self.threshold = choose_threshold(p_val, targets == self.positive, objective)
                calibration |= {"threshold": self.threshold, "threshold_objective": objective}
            calibration["positive_label"] = splits.label_names[self.positive]
        self.report["calibration"] = calibration
        self.report["baseline_hist_gradient_boosting"] = self._baseline(splits, objective)
        if rate is not None and self.positive is not None:
            self.report["baseline_isolation_forest"] = self._isolation_forest(splits, rate)

    def _fit_anomaly(self, mlp: TabularMLP, splits: Splits) -> dict[str, Any]:
        """Train the autoencoder on the negative training rows, standardise its score on negative
        validation rows, fit the combination (logistic regression on the MLP's log-odds and the
        score) on validation, and export the detector alone for the served `anomaly_score`."""
        import tempfile

        from sklearn.linear_model import LogisticRegression
        from tqdm.auto import tqdm

        from training.export import export_onnx

        assert mlp.anomaly is not None and self.positive is not None
        pos = self.positive
        ae = mlp.anomaly
        normal = splits.train.subset(np.flatnonzero(splits.train.targets != pos))
        torch.manual_seed(self.recipe.train.seed)
        optimiser = torch.optim.Adam(ae.net.parameters(), lr=2e-3, weight_decay=1e-5)
        loader = array_loader(normal, 1024, True, self.recipe.train.seed)
        ae.train()
        epochs = tqdm(
            range(self.options.anomaly_epochs), desc="autoencoder", disable=not self.progress, leave=False
        )
        for _ in epochs:
            for inputs, _targets in loader:
                optimiser.zero_grad()
                ae.errors(*inputs.values()).mean().backward()
                optimiser.step()
        ae.eval()

        def outputs(split: ArrayExamples) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                feeds = {k: torch.as_tensor(v) for k, v in split.inputs.items()}
                logits = mlp(*feeds.values()).numpy().astype(np.float64)
                return logits[:, pos] - logits[:, 1 - pos], ae(*feeds.values()).numpy().astype(np.float64)

        raw_val = outputs(splits.val)[1]
        negative = splits.val.targets != pos
        center, scale = float(np.median(raw_val[negative])), float(raw_val[negative].std() or 1.0)
        ae.center.fill_(center)
        ae.scale.fill_(scale)
        log_odds, score = outputs(splits.val)
        rate = self.options.alert_rate or 0.01
        held = self._held(len(splits.test))
        positive_test = splits.test.targets == pos
        test_log_odds, test_score = outputs(splits.test)
        # Each part alone on test at the same alert budget (reported, never used for a choice).
        parts = {
            name: ranking_metrics(test_scores, positive_test, budget_threshold(val_scores, rate), held)
            for name, val_scores, test_scores in (
                ("mlp", log_odds, test_log_odds),
                ("autoencoder", score, test_score),
            )
        }
        positive_val = splits.val.targets == pos
        alarms = [
            LogisticRegression(C=1.0).fit(values[:, None], positive_val) for values in (log_odds, score)
        ]
        weights = [float(v) for a in alarms for v in (a.coef_[0, 0], a.intercept_[0])]
        mlp.stack.copy_(torch.tensor(weights))
        mlp.positive, mlp.combined = pos, True

        folder = Path(tempfile.mkdtemp(prefix="tuneserve-anomaly-"))
        example = {k: torch.as_tensor(v[:2]) for k, v in splits.train.inputs.items()}
        signature = cast(Task, _AnomalySignature(self.input_names))
        export_onnx(ae, signature, example, folder / "anomaly.onnx", self.recipe.export.opset)
        self.anomaly_file = folder / "anomaly.onnx"
        return {
            "autoencoder": "32-8-32 on negative training rows, log mean squared reconstruction error",
            "combination": "noisy-OR of the two parts' alarms, each a logistic regression on validation",
            "alarms": {
                "mlp": {"weight": weights[0], "intercept": weights[1]},
                "autoencoder": {"weight": weights[2], "intercept": weights[3]},
            },
            "normal_score_center": center,
            "normal_score_scale": scale,
            "test_parts_at_alert_budget": parts,
        }

    def _held(self, rows: int) -> np.ndarray | None:
        """Which of `rows` outputs are held-out rows: known for the test split, told by its length."""
        if self.holdout_test is not None and self.holdout_test[0] == rows:
            return self.holdout_test[1]
        return None

    @staticmethod
    def _table(split: ArrayExamples) -> np.ndarray:
        return np.hstack(
            [split.inputs["numeric"], split.inputs.get("categorical", np.zeros((len(split), 0)))]
        ).astype(np.float64)

    def _baseline(self, splits: Splits, objective: str) -> dict[str, Any]:
        """scikit-learn's HistGradientBoostingClassifier on the same split and encoding (categorical
        columns as native categories), threshold chosen on validation the same way."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        table = self._table
        encoder = self.fitted_encoder
        width = encoder.numeric_width
        mask = [False] * width + [True] * len(encoder.categorical)
        clf = HistGradientBoostingClassifier(
            categorical_features=mask if any(mask) else None,
            max_iter=300,
            early_stopping=True,
            random_state=self.recipe.data.seed,
        )
        clf.fit(table(splits.train), splits.train.targets)
        val, test = clf.predict_proba(table(splits.val)), clf.predict_proba(table(splits.test))
        if self.positive is None:
            logits = np.log(np.clip(test, 1e-12, 1))
            return self.metrics(logits, splits.test.targets, splits.label_names)
        p_val, p_test = val[:, self.positive], test[:, self.positive]
        rate = self.options.alert_rate
        positive_test = splits.test.targets == self.positive
        if rate is not None:
            threshold = budget_threshold(p_val, rate)
            return binary_metrics(p_test, positive_test, threshold) | ranking_metrics(
                p_test, positive_test, threshold, self._held(len(splits.test))
            )
        threshold = choose_threshold(p_val, splits.val.targets == self.positive, objective)
        return binary_metrics(p_test, positive_test, threshold)

    def _isolation_forest(self, splits: Splits, rate: float) -> dict[str, Any]:
        """scikit-learn's IsolationForest on the training rows (unsupervised), its alert threshold
        from the same budget on validation."""
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=200, random_state=self.recipe.data.seed, n_jobs=1)
        forest.fit(self._table(splits.train))
        val = -forest.score_samples(self._table(splits.val))
        test = -forest.score_samples(self._table(splits.test))
        assert self.positive is not None
        return ranking_metrics(
            test,
            splits.test.targets == self.positive,
            budget_threshold(val, rate),
            self._held(len(splits.test)),
        )

    def preprocessing_config(self) -> dict[str, Any]:
        config = {
            "kind": "tabular",
            **self.fitted_encoder.config(),
            "target": self.recipe.data.target or self.options.target,
        }
        if self.positive is not None:
            config |= {"positive_index": self.positive, "threshold": self.threshold}
        options = self.options
        if options.derive is not None:
            config["derive"] = options.derive.model_dump()
        if options.alert_rate is not None:
            config["alert_rate"] = options.alert_rate
        if self.anomaly_file is not None:
            config["anomaly"] = "anomaly.onnx"  # a top-level file name: checked like every asset
        config["background"] = self.background
        return config

    def assets(self) -> dict[str, Path]:
        extra = {"anomaly.onnx": self.anomaly_file} if self.anomaly_file is not None else {}
        return {**super().assets(), **extra}

    def calibration_inputs(self, splits: Splits, count: int) -> list[dict[str, np.ndarray]]:
        part = splits.train.subset(np.arange(min(count, len(splits.train))))
        return [{k: v[i : i + 64] for k, v in part.inputs.items()} for i in range(0, len(part), 64)]
