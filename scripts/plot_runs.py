"""Validation accuracy against epoch for several run folders, in one figure.

Each run folder is one written by ``fnn train`` (its ``metrics.jsonl``, one JSON record per
epoch); the label of a run is its folder's name unless given as ``LABEL=FOLDER``.

Usage:
    python scripts/plot_runs.py --out docs/deep_training.png \\
        "depth 50=runs/deep_tanh_50" "depth 200=runs/deep_tanh_200"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fnn.plots import save_figure  # noqa: E402


def read_metrics(folder: Path) -> list[dict]:
    """The epoch records of a run folder, in order."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"plot_runs.py: error: {path}: no such file (not a run folder?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="FOLDER or LABEL=FOLDER")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--metric", default="val_accuracy")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in args.runs:
        label, _, folder = run.rpartition("=")
        folder = Path(folder)
        records = read_metrics(folder)
        epochs = [r["epoch"] for r in records]
        values = [r[args.metric] for r in records]
        ax.plot(epochs, values, marker="o", label=label or folder.name)
        print(f"{label or folder.name}: " + ", ".join(f"{v:.4f}" for v in values))
    ax.set_xlabel("epoch")
    ax.set_ylabel(args.metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.out)


if __name__ == "__main__":
    main()
