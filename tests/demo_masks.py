"""Test-only readers of the demo dataset's instance annotations: per-pixel category maps and
per-patch majority categories (reference implementations the tests check the generator and
the FSGR stage against)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.datasets.demo_writer import load_instances


def object_masks(instances: str | Path | dict[str, Any], image_id: int,
                 size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Category map of one image: int array [H, W] of category ids, 0 = background.

    Polygons are rasterised in annotation order (later objects on top, as drawn), scaled to
    `size` (an int for square output, or (width, height); default: the image's own size).
    At the native size the map covers exactly the pixels the generator painted.
    """
    data = load_instances(instances)
    info = next((im for im in data["images"] if im["id"] == image_id), None)
    if info is None:
        raise KeyError(f"image id {image_id} not in the instance annotations")
    width, height = (info["width"], info["height"]) if size is None else (
        (size, size) if isinstance(size, int) else size)
    sx, sy = width / info["width"], height / info["height"]
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for ann in data["annotations"]:
        if ann["image_id"] != image_id or not isinstance(ann["segmentation"], list):
            continue
        for poly in ann["segmentation"]:
            points = [(x * sx, y * sy) for x, y in zip(poly[0::2], poly[1::2])]
            draw.polygon(points, fill=int(ann["category_id"]))
    return np.asarray(canvas, dtype=np.int64)


def patch_categories(mask: np.ndarray, grid: int | tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per patch of a `grid` over `mask`: the most-covering object category (0 if none) and
    the fraction of the patch it covers; both [rows, cols]."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    height, width = mask.shape
    cats = np.zeros((rows, cols), np.int64)
    cover = np.zeros((rows, cols), np.float64)
    for r in range(rows):
        for c in range(cols):
            patch = mask[r * height // rows:(r + 1) * height // rows,
                         c * width // cols:(c + 1) * width // cols]
            ids, counts = np.unique(patch[patch > 0], return_counts=True)
            if len(ids):
                best = int(np.argmax(counts))
                cats[r, c], cover[r, c] = ids[best], counts[best] / patch.size
    return cats, cover
