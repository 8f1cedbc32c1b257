"""nocaps validation: its COCO-format caption json + images -> Karpathy json + domain subsets.

    data/nocaps/nocaps_val_4500_captions.json   data.captions_json[0], as published:
        {"info", "licenses", "images": [{"id", "file_name", "height", "width",
         "open_images_id", "coco_url", "domain": "in-domain" | "near-domain" | "out-domain"}],
         "annotations": [{"image_id", "id", "caption"}]}
    data/nocaps/images/validation/<file_name>   the images (data.image_root)

Writes `data.karpathy_json` (every image in split "val", its ten captions) and, for each entry
of `eval.subsets` named after a domain (`in_domain`, `near_domain`, `out_domain`), the ids of
that domain's images, so `evaluate` scores the split overall and per domain. The caption json
itself is the reference file. Where the network allows, a missing caption json is downloaded
from `NOCAPS_VAL_URL` and missing images from each image's `coco_url`. nocaps has no
instance annotations here: CHAIR is reported as not computed. The test split's captions are
held by the nocaps evaluation server, so only validation is scored locally.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from shared.atomic_files import write_json_atomic
from shared.config import Config, ConfigError
from shared.datasets.caption_files import CaptionedImage, write_caption_files
from shared.datasets.coco_download import (PROBE_TIMEOUT_S, READ_TIMEOUT_S, DownloadError,
                                           check_reachable, fetch)

NOCAPS_VAL_URL = "https://s3.amazonaws.com/nocaps/nocaps_val_4500_captions.json"
DOMAINS = ("in-domain", "near-domain", "out-domain")
IMAGE_FOLDER = "validation"


class NocapsFormatError(ValueError):
    """A nocaps file without the published layout; the message names file and field."""


def _int(path: Path, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NocapsFormatError(f"{path}: {where} is {value!r}, not an integer id")
    return value


def read_nocaps(path: Path) -> tuple[list[dict[str, Any]], dict[int, list[str]]]:
    """The `images` entries (checked: integer `id`, `file_name`, `domain`) and image id ->
    captions of a nocaps caption json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"nocaps caption json not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NocapsFormatError(f"{path}: not valid json ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations")):
        raise NocapsFormatError(f"{path}: expected an object with lists 'images' and "
                                "'annotations' (the nocaps caption json)")
    images = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise NocapsFormatError(f"{path}: images[{i}] is not an object")
        _int(path, f"images[{i}].id", entry.get("id"))
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise NocapsFormatError(f"{path}: images[{i}].file_name is "
                                    f"{entry.get('file_name')!r}, not a file name")
        if entry.get("domain") not in DOMAINS:
            raise NocapsFormatError(f"{path}: images[{i}].domain is {entry.get('domain')!r}, "
                                    f"expected one of {', '.join(DOMAINS)}")
        images.append(entry)
    captions: dict[int, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise NocapsFormatError(f"{path}: annotations[{i}] has no string 'caption'")
        captions.setdefault(_int(path, f"annotations[{i}].image_id", ann.get("image_id")),
                            []).append(" ".join(ann["caption"].split()))
    return images, captions


def domain_of_subset(name: str) -> str:
    """`in_domain` -> "in-domain"; a ConfigError for a name that is no nocaps domain."""
    domain = name.replace("_", "-")
    if domain not in DOMAINS:
        raise ConfigError(f"eval.subsets.{name}: not a nocaps domain (use in_domain, "
                          "near_domain, out_domain)")
    return domain


def download_images(images: list[dict[str, Any]], folder: Path,
                    probe_timeout: float = PROBE_TIMEOUT_S) -> int:
    """Fetch each missing image from its `coco_url`; how many were fetched."""
    missing = [e for e in images if not (folder / e["file_name"]).is_file()]
    if not missing:
        return 0
    urls = [e.get("coco_url") for e in missing]
    if not all(isinstance(u, str) and u for u in urls):
        raise FileNotFoundError(f"{len(missing)} nocaps images missing from {folder}/ (first: "
                                f"{missing[0]['file_name']}) and without a coco_url: place them "
                                "there")
    try:
        check_reachable(urls[:1], probe_timeout)
    except DownloadError:
        raise DownloadError(f"{len(missing)} nocaps images missing from {folder}/ (first: "
                            f"{missing[0]['file_name']}) and {urls[0]} cannot be reached: "
                            "place the validation images there") from None
    for entry, url in tqdm(list(zip(missing, urls)), desc="nocaps images", unit="img"):
        fetch(url, folder / entry["file_name"], READ_TIMEOUT_S, progress=False)
    return len(missing)


def prepare_nocaps(config: Config, probe_timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """Write the Karpathy json and the domain subset files (see the module docstring)."""
    data = config.data
    if len(data.captions_json) != 1:
        raise ConfigError("data.kind = \"nocaps\" needs data.captions_json = [the nocaps caption "
                          f"json], got {data.captions_json}")
    if data.instances_json:
        raise ConfigError("nocaps has no COCO instances here: set data.instances_json = []")
    source = Path(data.captions_json[0])
    lines = []
    if not source.is_file():
        try:
            check_reachable([NOCAPS_VAL_URL], probe_timeout)
        except DownloadError:
            raise DownloadError(f"cannot download {NOCAPS_VAL_URL}: place it at {source}, then "
                                "run this command again") from None
        fetch(NOCAPS_VAL_URL, source)
        lines.append(f"nocaps: downloaded {source}")
    images, captions = read_nocaps(source)
    folder = Path(data.image_root) / IMAGE_FOLDER
    fetched = download_images(images, folder, probe_timeout)
    if fetched:
        lines.append(f"nocaps: downloaded {fetched} images -> {folder}/")
    records = []
    for entry in images:
        refs = captions.get(entry["id"])
        if not refs:
            raise NocapsFormatError(f"{source}: image {entry['id']} ({entry['file_name']}) has "
                                    "no caption in 'annotations'")
        records.append(CaptionedImage(entry["id"], "val", IMAGE_FOLDER, entry["file_name"],
                                      tuple(refs), extra={"domain": entry["domain"]}))
    write_caption_files(records, data.karpathy_json, None, "nocaps")
    counts = []
    for name, path in config.eval.subsets.items():
        domain = domain_of_subset(name)
        ids = [r.image_id for r in records if r.extra["domain"] == domain]
        write_json_atomic(path, ids)
        counts.append(f"{name} {len(ids)}")
    lines.append(f"nocaps: {len(records)} validation images -> {data.karpathy_json}; domain "
                 f"subsets: {', '.join(counts) or 'none (eval.subsets is empty)'}")
    return lines
