"""Download COCO 2014 (images + annotations) and the Karpathy split into the `[data]` paths.

What is fetched (about 19 GB in all):

    http://images.cocodataset.org/zips/train2014.zip              -> <image_root>/train2014/
    http://images.cocodataset.org/zips/val2014.zip                -> <image_root>/val2014/
    http://images.cocodataset.org/annotations/annotations_trainval2014.zip
                                   -> captions_*2014.json, instances_*2014.json in the folder
                                      of data.captions_json
    https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip
                                   -> dataset_coco.json written to data.karpathy_json

Each host is probed first with a short timeout, so a machine without network access fails at
once with one line instead of hanging. Archives are downloaded to `<name>.part` and renamed
when complete (a failed download removes its part); archives already in place are skipped,
so an interrupted run can be repeated.
Flickr30k's images cannot be downloaded by a script (a sign-up): see
`shared.datasets.flickr30k`, which reuses `check_reachable` and `fetch` for Karpathy's json.
"""

from __future__ import annotations

import http.client
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from shared.config import ConfigError, DataConfig

TRAIN_IMAGES_URL = "http://images.cocodataset.org/zips/train2014.zip"
VAL_IMAGES_URL = "http://images.cocodataset.org/zips/val2014.zip"
ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
PROBE_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0


class DownloadError(RuntimeError):
    """A download that cannot run or complete; the message names the URL or file."""


@dataclass(frozen=True)
class Part:
    """One archive and the path whose presence shows it is already unpacked."""

    url: str
    done_when: Path


def coco_layout(data: DataConfig) -> tuple[Path, Path, Path]:
    """(image root, annotations folder, Karpathy json) named by the `[data]` config."""
    if not data.karpathy_json:
        raise ConfigError("config key 'data.karpathy_json' is empty: where should "
                          "dataset_coco.json go?")
    if not data.image_root:
        raise ConfigError("config key 'data.image_root' is empty: where should the COCO images go?")
    if not data.captions_json:
        raise ConfigError("config key 'data.captions_json' is empty: where should the COCO "
                          "annotations go?")
    return Path(data.image_root), Path(data.captions_json[0]).parent, Path(data.karpathy_json)


def coco_parts(data: DataConfig) -> list[Part]:
    """The archives to fetch, each with the path that shows it is done."""
    image_root, annotations, karpathy = coco_layout(data)
    needed = [Path(p) for p in (*data.captions_json, *data.instances_json)]
    marker = needed[0] if needed else annotations / "captions_train2014.json"
    return [Part(KARPATHY_URL, karpathy), Part(ANNOTATIONS_URL, marker),
            Part(VAL_IMAGES_URL, image_root / "val2014"),
            Part(TRAIN_IMAGES_URL, image_root / "train2014")]


def check_reachable(urls: list[str], timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise DownloadError at the first host that does not answer within `timeout` seconds."""
    for url in urls:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                pass
        except urllib.error.HTTPError:
            continue  # the host answered; the GET below reports real problems
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(
                f"cannot reach {urlparse(url).netloc} ({reason}): this machine cannot download "
                f"COCO; fetch {url} and the other archives listed in "
                f"shared/datasets/coco_download.py by hand") from None


def fetch(url: str, dest: Path, timeout: float = READ_TIMEOUT_S, progress: bool = True) -> Path:
    """Download `url` to `dest` (via `dest.part`, checked against its Content-Length), with a
    progress bar; skip if present."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                      disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:  # the connection closed early
                raise OSError(f"the connection closed after {received:,} of {total:,} bytes")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        part.unlink(missing_ok=True)  # a partial file is never resumed: leave no litter
        raise DownloadError(f"download of {url} failed: {getattr(err, 'reason', err)}") from None
    part.replace(dest)
    return dest


def _copy_member(zf: zipfile.ZipFile, name: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(name) as src, dest.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def _unpack(archive: Path, part: Part, data: DataConfig) -> None:
    image_root, annotations, karpathy = coco_layout(data)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if part.url == KARPATHY_URL:
                member = next((n for n in names if Path(n).name == "dataset_coco.json"), None)
                if member is None:
                    raise DownloadError(f"{archive}: has no dataset_coco.json")
                _copy_member(zf, member, karpathy)
            elif part.url == ANNOTATIONS_URL:
                for name in (n for n in names if n.endswith(".json")):
                    _copy_member(zf, name, annotations / Path(name).name)
            else:
                zf.extractall(image_root)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: broken archive ({err}); delete it and run again") from None


def download_coco(data: DataConfig, probe_timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """Fetch and unpack whatever of COCO 2014 + Karpathy split is missing; lines to print."""
    parts = coco_parts(data)
    missing = [p for p in parts if not p.done_when.exists()]
    if not missing:
        return [f"coco: all files present under {Path(data.image_root).parent}"]
    check_reachable([p.url for p in missing], probe_timeout)
    lines = []
    downloads = Path(data.karpathy_json).parent / "downloads"
    for part in missing:
        archive = fetch(part.url, downloads / Path(urlparse(part.url).path).name)
        _unpack(archive, part, data)
        lines.append(f"coco: unpacked {archive.name} -> {part.done_when}")
    for path in (*data.captions_json, *data.instances_json):
        if not Path(path).is_file():
            raise DownloadError(f"{path} is still missing after the download: check "
                                "data.captions_json / data.instances_json")
    return lines

