"""The pictures a build draws beside its report (runs/<name>/figures/), one function per kind.

Each function takes plain arrays, writes one PNG with matplotlib's Agg canvas (no display, no
pyplot state shared with a caller's own figures) and returns its path; tasks choose which to draw
(`Task.figures`) and hand them their data. The optuna study plots of `tuneserve search` live here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def training_curves(
    path: Path, history: Sequence[dict[str, Any]], metric: str, title: str = ""
) -> Path | None:
    """Training loss and the validation metric per epoch (the loop's history), the best epoch marked.
    None when nothing was trained."""
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    loss = [np.nan if h.get("train_loss") is None else h["train_loss"] for h in history]
    val = [h[f"val_{metric}"] for h in history]
    fig = _figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    left.plot(epochs, loss, marker="o", color="tab:blue")
    left.set(xlabel="epoch", ylabel="loss", title="training loss (mean over the epoch)")
    right.plot(epochs, val, marker="o", color="tab:orange")
    best = int(np.nanargmax(val))
    right.scatter([epochs[best]], [val[best]], s=120, facecolors="none", edgecolors="black", zorder=3)
    right.annotate(
        f"best {val[best]:.4f}", (epochs[best], val[best]), textcoords="offset points", xytext=(6, -14)
    )
    right.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix(path: Path, matrix: np.ndarray, labels: Sequence[str], title: str = "") -> Path:
    """Rows: true class, columns: predicted; colour is the share of the row, the number its count."""
    matrix = np.asarray(matrix)
    n = len(labels)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(14.0, 3.0 + 0.45 * n)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8 if n > 12 else 10,
                        color="white" if shares[i, j] > 0.5 else "black",
                    )
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"{title}\naccuracy {accuracy:.4f} on {matrix.sum()} examples" if title else "")
    return _save(fig, path)


def roc_pr_curves(
    path: Path, p_positive: np.ndarray, positive: np.ndarray, threshold: float | None = None, title: str = ""
) -> Path:
    """ROC and precision-recall curves of a binary classifier's positive-class probability, with
    the operating point of `threshold` marked on both."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    p_positive, positive = np.asarray(p_positive, dtype=np.float64), np.asarray(positive, dtype=bool)
    fig = _figure(10, 4.6)
    roc_ax, pr_ax = fig.subplots(1, 2)
    fpr, tpr, _ = roc_curve(positive, p_positive)
    roc_ax.plot(fpr, tpr, color="tab:blue", label=f"AUC {auc(fpr, tpr):.4f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    precision, recall, _ = precision_recall_curve(positive, p_positive)
    ap = average_precision_score(positive, p_positive)
    pr_ax.plot(recall, precision, color="tab:blue", label=f"average precision {ap:.4f}")
    pr_ax.axhline(positive.mean(), color="grey", linestyle=":", label="prevalence")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall")
    if threshold is not None:
        guess = p_positive >= threshold
        tp, fp = int((guess & positive).sum()), int((guess & ~positive).sum())
        point_tpr = tp / max(1, positive.sum())
        point_fpr = fp / max(1, (~positive).sum())
        point_precision = tp / max(1, tp + fp)
        marker = dict(color="tab:red", zorder=3, label=f"threshold {threshold:.3f}")
        roc_ax.scatter([point_fpr], [point_tpr], **marker)
        pr_ax.scatter([point_tpr], [point_precision], **marker)
    for ax in (roc_ax, pr_ax):
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def backtest(
    path: Path,
    series: np.ndarray,
    origins: np.ndarray,
    quantiles: np.ndarray,
    naive: np.ndarray | None = None,
    context: int = 168,
    title: str = "",
) -> Path:
    """A rolling-origin backtest: the actual series over the forecast origins (and `context` points
    before the first), each origin's p50 forecast and its p10-p90 band; `quantiles` is (origins,
    horizon, 3) in the series' units, `naive` (origins, horizon) an optional baseline."""
    series, origins, quantiles = np.asarray(series), np.asarray(origins), np.asarray(quantiles)
    horizon = quantiles.shape[1]
    start, end = max(0, int(origins[0]) - context), min(len(series), int(origins[-1]) + horizon)
    zero = int(origins[0])
    fig = _figure(14, 4.6)
    ax = fig.subplots()
    ax.plot(np.arange(start, end) - zero, series[start:end], color="black", linewidth=1, label="actual")
    for k, origin in enumerate(origins):
        hours = np.arange(origin, origin + horizon) - zero
        first = k == 0  # one legend entry per kind
        ax.fill_between(
            hours,
            quantiles[k, :, 0],
            quantiles[k, :, 2],
            color="tab:blue",
            alpha=0.25,
            linewidth=0,
            label="p10-p90" if first else None,
        )
        ax.plot(hours, quantiles[k, :, 1], color="tab:blue", linewidth=1.2, label="p50" if first else None)
        if naive is not None:
            ax.plot(
                hours,
                naive[k],
                color="tab:grey",
                linestyle="--",
                linewidth=0.8,
                label="seasonal naive" if first else None,
            )
    truth = np.stack([series[o : o + horizon] for o in origins])
    inside = float(((quantiles[..., 0] <= truth) & (truth <= quantiles[..., 2])).mean())
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(
        xlabel="hours from the first forecast origin",
        ylabel="value",
        title=(f"{title}\n" if title else "")
        + f"{len(origins)} origins, horizon {horizon}; p10-p90 covers {inside:.1%} of the actual points",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", ncols=4)
    return _save(fig, path)


def misclassified_images(
    path: Path,
    images: Sequence[np.ndarray],
    true: np.ndarray,
    predicted: np.ndarray,
    label_names: Sequence[str],
    per_class: int = 6,
    max_classes: int = 12,
    title: str = "",
) -> Path | None:
    """A grid of mistakes: a row per true class (those with the most mistakes first, at most
    `max_classes`), up to `per_class` images each, titled with the predicted label. None when there
    is no mistake."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    wrong = np.flatnonzero(true != predicted)
    if not len(wrong):
        return None
    classes, counts = np.unique(true[wrong], return_counts=True)
    rows = classes[np.argsort(-counts, kind="stable")][:max_classes]
    cols = min(per_class, int(counts.max()))
    fig = _figure(1.9 * cols + 1.2, 2.0 * len(rows) + 0.6)
    axes = np.asarray(fig.subplots(len(rows), cols, squeeze=False))
    for r, cls in enumerate(rows):
        picked = wrong[true[wrong] == cls]
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(picked):
                ax.axis("off")
                continue
            ax.imshow(images[picked[c]])
            ax.set_title(f"→ {label_names[predicted[picked[c]]]}", fontsize=9, color="tab:red")
        axes[r, 0].axis("on")
        axes[r, 0].set_ylabel(f"{label_names[cls]}\n({int(counts[classes == cls][0])} wrong)", fontsize=9)
    fig.suptitle(
        (f"{title}\n" if title else "")
        + f"{len(wrong)} of {len(true)} misclassified; rows: true class, titles: predicted"
    )
    return _save(fig, path)


def entity_f1(path: Path, scores: dict[str, float], title: str = "") -> Path:
    """F1 per entity type as horizontal bars, the weakest at the bottom."""
    names = sorted(scores, key=lambda k: scores[k])
    fig = _figure(7, 1.2 + 0.45 * len(names))
    ax = fig.subplots()
    bars = ax.barh(names, [scores[k] for k in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3)
    ax.set(xlim=(0, 1.1), xlabel="F1 (entity level, strict spans)", title=title or "F1 per entity type")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def optuna_study(study, folder: Path) -> list[Path]:
    """optuna's optimisation history and parameter importances (history.png, importance.png); a plot
    optuna cannot draw (importances need two completed trials) is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # optuna draws with pyplot
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, plot in (
            ("history.png", ov.plot_optimization_history),
            ("importance.png", ov.plot_param_importances),
        ):
            try:
                axes: Any = plot(study)  # one Axes, or an array of them
            except (ValueError, RuntimeError):
                continue
            fig = (axes[0] if hasattr(axes, "__len__") else axes).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            written.append(_save(fig, Path(folder) / name))
            plt.close(fig)
    return written
