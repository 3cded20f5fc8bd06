"""Plots people would rather look at than read: training curves and tuning trials (PNG bytes)."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

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
