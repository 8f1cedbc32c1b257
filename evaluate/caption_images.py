"""The images `evaluate caption` and `Captioner.caption` take: files, folders, PIL images.

Files are decoded as `extract clip` decodes the dataset (`shared.images.load_rgb`, JPEGs at
reduced scale for CLIP's input size), so an image of the dataset gets the caption
`evaluate score` gave it. A PIL image is used as it is, except one still unread from its file
(`Image.open(path)`), which is read like that file and so gets the file's caption.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Union

from PIL import Image, ImageFile

from shared.images import load_rgb, to_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

ImageInput = Union[str, Path, Image.Image]
"""A file, a folder (searched recursively for image files) or a PIL image."""

Source = Union[Path, int]
"""Where a caption's image came from: its file, or the position of a PIL image in the input."""


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly (whatever their suffix) plus image files found under folders."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def expand_inputs(images: ImageInput | Iterable[ImageInput]
                  ) -> list[tuple[Source, Path | Image.Image]]:
    """(source, image) of each image, in input order, folders expanded in place."""
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    items: list[tuple[Source, Path | Image.Image]] = []
    for index, image in enumerate(images):
        if isinstance(image, Image.Image):
            items.append((index, image))
        elif isinstance(image, (str, Path)):
            items.extend((path, path) for path in image_files([image]))
        else:
            raise TypeError(f"image {index}: expected a path or a PIL image, "
                            f"got {type(image).__name__}")
    return items


def read_rgb(image: Path | Image.Image, target_size: int) -> Image.Image:
    """The RGB image to caption; `shared.images.ImageError` when it cannot be decoded."""
    if isinstance(image, Path):
        return load_rgb(image, target_size=target_size)
    if _unread_file(image):
        return load_rgb(image.filename, target_size=target_size)
    image.load()
    return to_rgb(image)


def _unread_file(image: Image.Image) -> bool:
    """An `Image.open(path)` image whose pixels have not been decoded yet."""
    return (isinstance(image, ImageFile.ImageFile) and bool(image.tile)
            and isinstance(getattr(image, "filename", None), str) and image.filename != ""
            and Path(image.filename).is_file())
