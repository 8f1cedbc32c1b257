"""Dataset preparation: the embedded demo dataset (+ its tiny CLIP) and COCO / Flickr30k.

Run as `python -m shared.datasets prepare --config configs/<dataset>.toml`.
"""

from shared.datasets.demo_scenes import (
    CATEGORIES,
    SYNONYMS,
    DemoPaths,
    demo_overrides,
    generate_dataset,
    object_masks,
    patch_categories,
    prepare_demo_data,
)

__all__ = ["CATEGORIES", "SYNONYMS", "DemoPaths", "demo_overrides", "generate_dataset",
           "object_masks", "patch_categories", "prepare_demo_data"]
