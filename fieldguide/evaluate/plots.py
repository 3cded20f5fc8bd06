"""Plots people would rather look at than read: training curves, tuning trials, confusion matrix, reliability (PNG)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def training_curves(history: list[dict[str, float]], title: str) -> bytes:
    """Loss and accuracy per epoch, train and val."""
    epochs = [int(h["epoch"]) + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        if history and key in history[0]:
            ax1.plot(epochs, [h[key] for h in history], style, marker="o", label=key)
    for key, style in (("train_acc", "-"), ("val_acc", "--")):
        if history and key in history[0]:
            ax2.plot(epochs, [h[key] for h in history], style, marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax2.set_xlabel("epoch")
    ax2.set_title("accuracy")
    ax2.set_ylim(0, 1)
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _png(fig)


def trials_plot(trials: list[Any], best_index: int) -> bytes:
    """Validation accuracy of each trial against its learning rate (best one highlighted)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [t.params["lr"] for t in trials]
    ys = [t.val_acc for t in trials]
    ax.scatter(xs, ys, c=["tab:red" if t.index == best_index else "tab:blue" for t in trials], s=50)
    for t in trials:
        ax.annotate(f"#{t.index}", (t.params["lr"], t.val_acc), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"tuning: {len(trials)} trials, best #{best_index}")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_plot(matrix: list[list[int]], classes: list[str], title: str) -> bytes:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = min(3 + 0.45 * len(classes), 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=classes).plot(
        ax=ax, cmap="Greens", colorbar=False, xticks_rotation=45
    )
    ax.set_title(title)
    return _png(fig)


def reliability_plot(bins: list[dict[str, float]], ece: float, title: str) -> bytes:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal of perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    if bins:
        ax.bar(
            [(b["lo"] + b["hi"]) / 2 for b in bins],
            [b["accuracy"] for b in bins],
            width=[b["hi"] - b["lo"] for b in bins],
            edgecolor="black",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="tab:red", label="bins")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return _png(fig)
