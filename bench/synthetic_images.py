"""Generated JPEG images + Karpathy json for benchmarks (no dataset download needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image_set(root: Path, n_images: int, size: int = 320, seed: int = 0) -> Path:
    """`n_images` noisy gradient JPEGs under `root/images` and `root/dataset.json`."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    entries = []
    for i in range(n_images):
        base = np.stack([(xx * rng.uniform(0.2, 1)) % 256, (yy * rng.uniform(0.2, 1)) % 256,
                         (xx + yy) % 256], axis=-1)
        noisy = (base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        name = f"{i:06d}.jpg"
        Image.fromarray(noisy).save(root / "images" / name, quality=90)
        entries.append({"split": "train", "filepath": "", "filename": name, "imgid": i,
                        "sentences": [{"tokens": ["an", "image"], "raw": "An image."}]})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    return root
