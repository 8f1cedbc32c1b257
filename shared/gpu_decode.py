"""Batched JPEG decoding and CLIP preprocessing on tensors (`clip.decode = "gpu"`).

`extract clip` with `clip.decode = "gpu"` reads each file's bytes in the DataLoader workers
(`jpeg_bytes`: JPEGs in RGB or greyscale within the pixel limit; anything else is decoded there
by the CPU path, `shared.images.load_rgb` + open_clip's transform), then decodes a whole batch on
the GPU (`decode_jpegs`: `torchvision.io.decode_jpeg(list, device="cuda")`) and resizes, crops
and normalises it there (`preprocess_tensors`, the ops of open_clip's PIL transform on tensors,
`TensorPreprocess.from_transform`). A JPEG the GPU cannot decode goes back to the CPU path.

How close the two paths are (tests/test_gpu_decode.py, on the CPU with the same ops):
`torchvision.io.decode_jpeg` on the CPU gives PIL's pixels exactly, and the tensor resize is
within two 8-bit levels of PIL's (PIL's bicubic is fixed-point; the mean is far below one
level), i.e. `RESIZE_TOLERANCE` after normalisation. But the CPU path decodes a JPEG at least
twice the model's input size on both sides at a reduced DCT scale (PIL `draft`, 1/2 to 1/8),
which nvJPEG cannot do: the GPU path decodes it at full size and resizes with antialiasing,
which differs from the draft decode by more than the resize tolerance (`DRAFT_TOLERANCE_MEAN`
on average, edges up to `DRAFT_TOLERANCE_MAX`). So `clip.decode = "gpu"` is part of the CLIP
store's identity (`shared.stages.clip_stage`). nvJPEG itself may differ from libjpeg-turbo by
an 8-bit level or two; `make gpu-check` reports the difference on its images.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from shared.images import MAX_PIXELS

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # files not ending in EOI (truncated, trailing bytes) take the CPU path
GPU_MODES = ("RGB", "L")  # PIL modes of JPEGs decoded as RGB by nvJPEG like by PIL
RESIZE_TOLERANCE = 2.5 / 255 / 0.26  # two 8-bit levels (+ rounding) over CLIP's smallest std
DRAFT_TOLERANCE_MEAN = 0.05  # mean |difference| after normalisation, noise images (worst case)
DRAFT_TOLERANCE_MAX = 0.4


class UnsupportedPreprocess(ValueError):
    """A model whose image transform the tensor path does not reproduce."""


@dataclass(frozen=True)
class TensorPreprocess:
    """open_clip's eval transform as tensor ops: resize (shorter side, or both sides), centre
    crop, scale to [0, 1], normalise."""

    size: tuple[int, ...]           # (s,): shorter side to s; (h, w): both sides
    interpolation: InterpolationMode
    antialias: bool
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_transform(cls, transform: Any) -> TensorPreprocess:
        """Read `Compose([Resize, CenterCrop, (RGB convert), ToTensor, Normalize])`; any other
        transform raises `UnsupportedPreprocess` (use `clip.decode = "cpu"`)."""
        steps = list(getattr(transform, "transforms", [transform]))
        resize = crop = normalize = None
        for step in steps:
            name = type(step).__name__
            if isinstance(step, T.Resize) and step.max_size is None:
                resize = step
            elif isinstance(step, T.CenterCrop):
                crop = step
            elif isinstance(step, T.Normalize):
                normalize = step
            elif name in ("MaybeConvertMode", "MaybeToTensor", "ToTensor") or \
                    getattr(step, "__name__", "") == "_convert_to_rgb":
                continue
            else:
                raise UnsupportedPreprocess(
                    f"clip.decode = 'gpu' cannot reproduce the model's image transform step "
                    f"{name}; use clip.decode = 'cpu'")
        if resize is None or crop is None or normalize is None:
            raise UnsupportedPreprocess("clip.decode = 'gpu' needs a Resize, CenterCrop and "
                                        "Normalize transform; use clip.decode = 'cpu'")
        size = (resize.size,) if isinstance(resize.size, int) else tuple(resize.size)
        crop_size = tuple(crop.size) if len(crop.size) == 2 else (crop.size[0],) * 2
        return cls(size, resize.interpolation, resize.antialias is not False,
                   (int(crop_size[0]), int(crop_size[1])),
                   tuple(float(m) for m in normalize.mean), tuple(float(s) for s in normalize.std))


def preprocess_tensors(images: Sequence[torch.Tensor], spec: TensorPreprocess,
                       device: torch.device | str) -> torch.Tensor:
    """uint8 [3, H, W] images of any sizes -> [N, 3, h, w] float32 on `device`: the same ops as
    open_clip's PIL transform (resize with rounding back to 8 bits as PIL does, centre crop,
    /255, normalise). Images of one size are resized together."""
    device = torch.device(device)
    out = torch.empty(len(images), 3, *spec.crop, dtype=torch.float32, device=device)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i}: expected uint8 [3, H, W], got {image.dtype} "
                             f"{list(image.shape)}")
        by_size[(image.shape[1], image.shape[2])].append(i)
    for rows in by_size.values():
        batch = torch.stack([images[i].to(device, non_blocking=True) for i in rows])
        batch = TF.resize(batch, list(spec.size), interpolation=spec.interpolation,
                          antialias=spec.antialias)
        out[rows] = TF.center_crop(batch, list(spec.crop)).float()
    out.div_(255)
    return TF.normalize(out, list(spec.mean), list(spec.std), inplace=True)


def jpeg_bytes(path: str | Path) -> torch.Tensor | None:
    """The file's bytes as a uint8 tensor when it is a JPEG the GPU path takes (RGB or
    greyscale, within `MAX_PIXELS`, header readable, ending in the EOI marker); None for
    everything else (not found, empty, another format, CMYK, unreadable header, truncated),
    which the CPU path decodes or reports: a truncated file is then refused exactly as by
    the CPU path, whatever nvJPEG would make of it."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(JPEG_MAGIC) or not data.endswith(JPEG_END):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format != "JPEG" or image.mode not in GPU_MODES or \
                    width * height > MAX_PIXELS:
                return None
    except Exception:  # noqa: BLE001 - the CPU path gives the reason
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpegs(datas: Sequence[torch.Tensor], device: torch.device | str
                 ) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors to uint8 RGB [3, H, W] on `device` (one batched call; when it
    fails, one call per image); None for each image that cannot be decoded there."""
    if not datas:
        return []
    device = torch.device(device)
    try:
        return list(decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device))
    except Exception:  # noqa: BLE001 - some image of the batch: find it below
        pass
    decoded: list[torch.Tensor | None] = []
    for data in datas:
        try:
            decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - the CPU path decodes it or gives the reason
            decoded.append(None)
    return decoded


@dataclass
class MixedBatch:
    """A collated batch of `clip.decode = "gpu"`: JPEG bytes at `jpeg_at`, images the workers
    preprocessed (the CPU path) at `cpu_at`."""

    rows: list[int]
    jpeg_at: list[int]
    jpegs: list[torch.Tensor]
    cpu_at: list[int]
    cpu_images: torch.Tensor      # [len(cpu_at), 3, h, w] (possibly empty)
    reasons: list[str]

    def pin_memory(self) -> MixedBatch:
        """Pinned host memory, so the copies to the GPU can be asynchronous."""
        self.jpegs = [t.pin_memory() for t in self.jpegs]
        self.cpu_images = self.cpu_images.pin_memory()
        return self


def collate_mixed(items: list[tuple[int, torch.Tensor, str]]) -> MixedBatch:
    """Collate (row, payload, reason) items: a 1-D uint8 payload is a JPEG's bytes, a 3-D one a
    preprocessed image."""
    rows = [row for row, _, _ in items]
    jpeg_at = [i for i, (_, p, _) in enumerate(items) if p.ndim == 1]
    cpu_at = [i for i, (_, p, _) in enumerate(items) if p.ndim != 1]
    cpu = [items[i][1] for i in cpu_at]
    return MixedBatch(rows, jpeg_at, [items[i][1] for i in jpeg_at], cpu_at,
                      torch.stack(cpu) if cpu else torch.empty(0), [r for _, _, r in items])


def assemble(batch: MixedBatch, spec: TensorPreprocess, device: torch.device | str,
             fallback: Callable[[int], tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """The batch's images [N, 3, h, w] on `device` and the failure reasons: JPEGs decoded and
    preprocessed on `device`, the rest copied there; a JPEG that does not decode goes to
    `fallback(row)` (the CPU path: its image, or zeros and its reason)."""
    device = torch.device(device)
    out = torch.empty(len(batch.rows), 3, *spec.crop, dtype=torch.float32, device=device)
    reasons = list(batch.reasons)
    if batch.cpu_at:  # straight from the pinned batch, asynchronously
        out[batch.cpu_at] = batch.cpu_images.to(device, non_blocking=True)
    decoded = decode_jpegs(batch.jpegs, device)
    good = [(at, img) for at, img in zip(batch.jpeg_at, decoded) if img is not None]
    if good:
        out[[at for at, _ in good]] = preprocess_tensors([img for _, img in good], spec, device)
    for at, img in zip(batch.jpeg_at, decoded):
        if img is None:
            image, reasons[at] = fallback(batch.rows[at])
            out[at] = image.to(device)
    return out, reasons
