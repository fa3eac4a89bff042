"""Pictures of a run: confusion matrix and training curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], out: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix; cell counts are printed when there are at most 20 classes."""
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415

    plt = _pyplot()
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.35 * n + 2), 40)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=8 if n > 20 else 10)
    ax.set_yticks(ticks, class_names, fontsize=8 if n > 20 else 10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_history(history: dict[str, list[float]], out: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if key in history:
                ax.plot(np.arange(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
