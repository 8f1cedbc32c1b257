"""Training curves (loss and validation CIDEr-D per epoch) as a PNG beside the log."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Plot train/val loss and val CIDEr-D from a JSON-lines log (one record per epoch)."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_cider) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in records], marker="o", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_cider.plot(epochs, [r["val_cider"] for r in records], marker="o", color="tab:green")
    ax_cider.set_xlabel("epoch")
    ax_cider.set_ylabel("val CIDEr-D (greedy)")
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png_path)
