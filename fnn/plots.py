"""Training curves: loss and accuracy per epoch, train vs validation, saved as a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_curves", "save_figure"]


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    from fnn.train.checkpoint import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return Path(path)


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                title: str = "") -> Path:
    """Write ``path`` (PNG): loss (and accuracy, when logged) per epoch, train vs validation.

    Args:
        history: one record per epoch with keys like ``train_loss`` and ``val_accuracy``.

    Example:
        >>> import os, tempfile
        >>> history = [{"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "train_accuracy": 0.7},
        ...            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.8}]
        >>> path = plot_curves(history, os.path.join(tempfile.mkdtemp(), "curves.png"))
        >>> path.name, path.stat().st_size > 0
        ('curves.png', True)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("loss", "accuracy") if any(f"train_{m}" in r for r in history)]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(5 * max(len(metrics), 1), 3.6),
                             squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, metric in zip(axes[0], metrics):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            if any(key in r for r in history):
                ax.plot(epochs, [r.get(key) for r in history], style, ms=3,
                        label="validation" if split == "val" else split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
