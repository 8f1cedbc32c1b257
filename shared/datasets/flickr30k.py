"""Flickr30k with Karpathy's split: check the files, write the COCO caption json.

    data/flickr30k/dataset_flickr30k.json   Karpathy's json (from caption_datasets.zip, which
                                            this module downloads where the network allows)
    data/flickr30k/flickr30k-images/*.jpg   the images (a sign-up: placed by hand)

The Karpathy json has COCO's schema (`images[]` with `filename`, `split`, integer `imgid`,
`sentids`, `sentences[]` with `tokens` / `raw`; no `filepath`): 29,000 train, 1,014 val,
1,000 test images, five captions each. `data.captions_json` (when set) gets the same captions
as a COCO caption json. Flickr30k has no instance annotations, so CHAIR is reported as not
computed (`metrics.json` "not_computed"), never as zero.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from shared.config import Config, ConfigError
from shared.datasets.caption_files import (CaptionedImage, coco_captions_payload, split_counts,
                                           write_compact_json)
from shared.datasets.coco_download import (KARPATHY_URL, PROBE_TIMEOUT_S, DownloadError,
                                           check_reachable, fetch)
from shared.karpathy import load_karpathy

IMAGES_URL = "https://shannon.cs.illinois.edu/DenotationGraph/"
KARPATHY_MEMBER = "dataset_flickr30k.json"


def _place_images_line(image_root: Path) -> str:
    return (f"flickr30k images missing: request them at {IMAGES_URL} (sign-up) and unpack "
            f"flickr30k-images/*.jpg into {image_root}/, then run this command again")


def download_karpathy_json(dest: Path, probe_timeout: float = PROBE_TIMEOUT_S) -> Path:
    """Fetch caption_datasets.zip (beside `dest`, in downloads/) and copy its
    dataset_flickr30k.json to `dest`; one-line DownloadError when the host cannot be reached."""
    try:
        check_reachable([KARPATHY_URL], probe_timeout)
    except DownloadError:
        raise DownloadError(f"cannot download {KARPATHY_URL}: place {KARPATHY_MEMBER} from it "
                            f"at {dest}, then run this command again") from None
    archive = fetch(KARPATHY_URL, dest.parent / "downloads" / Path(KARPATHY_URL).name)
    try:
        with zipfile.ZipFile(archive) as zf:
            member = next((n for n in zf.namelist() if Path(n).name == KARPATHY_MEMBER), None)
            if member is None:
                raise DownloadError(f"{archive}: has no {KARPATHY_MEMBER}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            part.write_bytes(zf.read(member))
            part.replace(dest)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: broken archive ({err}); delete it and run again") \
            from None
    return dest


def prepare_flickr30k(config: Config, probe_timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """Check the images and the Karpathy json (downloading the json where possible), write
    the COCO caption json; lines to print. A missing piece is one error line saying what to
    place where."""
    data = config.data
    if data.instances_json:
        raise ConfigError("Flickr30k has no instance annotations: set data.instances_json = [] "
                          "(CHAIR is then reported as not computed)")
    image_root, json_path = Path(data.image_root), Path(data.karpathy_json)
    if not image_root.is_dir() or not any(image_root.iterdir()):
        raise FileNotFoundError(_place_images_line(image_root))
    lines = []
    if not json_path.is_file():
        download_karpathy_json(json_path, probe_timeout)
        lines.append(f"flickr30k: downloaded {KARPATHY_MEMBER} -> {json_path}")
    records = load_karpathy(json_path, image_root, check_images=True)
    images = [CaptionedImage(r.image_id, r.split, "", r.path.name, r.captions) for r in records]
    if data.captions_json:
        write_compact_json(data.captions_json[0], coco_captions_payload(images, "flickr30k"))
        lines.append(f"flickr30k: COCO caption json -> {data.captions_json[0]}")
    lines.append(f"flickr30k: {json_path}: {len(records)} images ({split_counts(images)}), "
                 "all present; no instances: CHAIR is reported as not computed")
    return lines
