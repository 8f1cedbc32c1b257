"""Robust image decoding: every readable image becomes RGB; unreadable ones raise ImageError.

Converted: grayscale, palette, CMYK, 16-bit, alpha (composited on white), tiny images, and huge
images (JPEG decoded at reduced size via `draft`). Not converted, reported: missing, zero-byte,
truncated or non-image files, and images beyond the pixel limit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

MAX_PIXELS = 400_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # our own limit below names the size; PIL's would not
ImageFile.LOAD_TRUNCATED_IMAGES = False
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageError(ValueError):
    """An image that cannot be decoded; the message gives the reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as `extract clip` feeds CLIP: transparency over white, 16-bit greys scaled to 8."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path, target_size: int = 0) -> Image.Image:
    """Decode `path` as an RGB PIL image; `target_size` lets JPEGs decode at reduced scale."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image too large ({width}x{height} pixels)")
            if target_size and image.format == "JPEG":
                image.draft("RGB", (target_size, target_size))
            image.load()
            return to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode: {err}") from None
