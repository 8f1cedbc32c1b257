"""Training curves (loss and validation CIDEr-D per epoch) as a PNG beside the log.

Cross-entropy records come from `train/log.jsonl`; with SCST's own log
(`train/scst/log.jsonl`, epochs counted from 0 = the starting weights) its epochs are drawn
after the last cross-entropy epoch, so the CIDEr-D panel reads as one run, and a third panel
shows SCST's mean training reward.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shared.atomic_files import atomic_path  # noqa: E402


def _series(records: list[dict], key: str, offset: int = 0) -> tuple[list[int], list[float]]:
    """(epochs + offset, values) of the records that have `key`."""
    pairs = [(r["epoch"] + offset, r[key]) for r in records if r.get(key) is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def _records(log_path: Path | None) -> list[dict]:
    if log_path is None or not Path(log_path).is_file():
        return []
    return [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]


def plot_curves(xe_log: Path, png_path: Path, scst_log: Path | None = None) -> None:
    """Plot train/val loss and val CIDEr-D from the JSON-lines logs (one record per epoch)."""
    xe, scst = _records(xe_log), _records(scst_log)
    offset = max((r["epoch"] for r in xe), default=0)
    panels = 3 if scst else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5))
    ax_loss, ax_cider = axes[0], axes[1]
    ax_loss.plot(*_series(xe, "train_loss"), marker="o", label="train")
    ax_loss.plot(*_series(xe, "val_loss"), marker="o", label="val")
    if scst:
        ax_loss.plot(*_series(scst, "val_loss", offset), marker="o", label="val (SCST)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_cider.plot(*_series(xe, "val_cider"), marker="o", color="tab:green", label="XE")
    if scst:
        ax_cider.plot(*_series(scst, "val_cider", offset), marker="o", color="tab:red",
                      label="SCST")
        ax_cider.axvline(offset, color="grey", linestyle=":", linewidth=1)
        ax_cider.legend()
        ax_reward = axes[2]
        ax_reward.plot(*_series(scst, "mean_reward"), marker="o", color="tab:purple")
        ax_reward.set_xlabel("SCST epoch")
        ax_reward.set_ylabel("mean train reward (CIDEr-D)")
    ax_cider.set_xlabel("epoch")
    ax_cider.set_ylabel("val CIDEr-D (greedy)")
    fig.tight_layout()
    try:
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
