"""Dataset preparation: the embedded demo dataset (+ its tiny CLIP), COCO, Flickr30k, Visual
Genome and nocaps.

Run as `python -m shared.datasets prepare --config configs/<dataset>.toml`.
"""

from shared.datasets.demo_captions import SYNONYMS
from shared.datasets.demo_scenes import CATEGORIES
from shared.datasets.demo_stage import demo_overrides, prepare_demo_data
from shared.datasets.demo_writer import DemoPaths, generate_dataset

__all__ = ["CATEGORIES", "SYNONYMS", "DemoPaths", "demo_overrides", "generate_dataset",
           "prepare_demo_data"]
