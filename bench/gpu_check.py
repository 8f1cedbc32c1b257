"""GPU check (only on a CUDA machine; not part of `make test`): `make gpu-check`.

`extract clip` with ViT-L-14 (random weights) over generated images, bf16 autocast: prints
images/s, model TFLOP/s (forward FLOPs counted by torch.utils.flop_counter) and peak GPU
memory as JSON. Later issues add their own sections.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic_images import write_image_set  # noqa: E402
from extract.clip_features import extract_clip  # noqa: E402
from shared.clip_model import create_clip, encode_images  # noqa: E402
from shared.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def forward_flops_per_image(model_name: str) -> float:
    """Forward FLOPs of the vision tower for one image."""
    bundle = create_clip(model_name, "", device="cuda")
    images = torch.randn(1, 3, bundle.image_size, bundle.image_size, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encode_images(bundle, images)
    return float(counter.get_total_flops())


def check_extract(n_images: int, batch: int, workers: int, model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_image_set(Path(tmp) / "data", n_images, size=320)
        config = load_config(REPO / "configs" / "coco.toml", [
            f'data.karpathy_json="{data / "dataset.json"}"', f'data.image_root="{data / "images"}"',
            f'data.run_root="{Path(tmp) / "runs"}"', f'clip.model="{model}"', 'clip.pretrained=""',
            'clip.device="cuda"', f"clip.batch_size={batch}", f"clip.num_workers={workers}",
            f"store.rows_per_chunk={batch}"])
        torch.cuda.reset_peak_memory_stats()
        result = extract_clip(config, progress=False)
        assert result.complete and result.failed == 0
    ips = result.processed / result.seconds
    flops = forward_flops_per_image(model)
    return {"model": model, "images": n_images, "batch": batch, "workers": workers,
            "precision": "bf16", "images_per_s": round(ips, 1),
            "model_tflops_per_s": round(ips * flops / 1e12, 1),
            "gflops_per_image": round(flops / 1e9, 1),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--model", default="ViT-L-14")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU visible; run it on a GPU machine")
    report = {"device": torch.cuda.get_device_name(),
              "extract_clip": check_extract(args.images, args.batch, args.workers, args.model)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
