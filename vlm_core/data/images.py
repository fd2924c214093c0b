"""Reading one image the way training sees it: RGB, first frame, upright, fully decoded, bounded in size.

Third-party image folders hold everything: CMYK JPEGs, greyscale and 16-bit PNGs, palette GIFs with transparency,
animated GIF / WebP, truncated downloads, zero-byte placeholders and multi-gigapixel scans. ``open_rgb`` turns each
into the RGB picture an encoder's image processor expects, or raises ``ImageError`` naming the file, the problem and
the fix; ``image_problem`` is the same check as a reason string (``data build --check-images`` quarantines with it).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..base.errors import DataError

MAX_PIXELS = 64_000_000
"""Larger images are refused before decoding (a 64 MP RGB image is already ~190 MB in memory; the encoders see 224²)."""
BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited onto white (the page most transparent images were made for)."""

FIX = "replace or remove the file, or rebuild the data with `vlm-sweep data build --check-images` to quarantine it"


class ImageError(DataError):
    """An image cannot be used; the message names the file, the problem and the fix."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}; {FIX}")
        self.path, self.problem = path, problem


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":  # palette: its transparency (if any) becomes an alpha channel
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / 32-bit greyscale: scale, don't clip
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr (PIL inverts Adobe CMYK JPEGs on load)


def resolve_image(image: str | Path, root: str | Path | None) -> Path:
    """Where a record's ``image`` is: an absolute path as it is, a relative one under ``root`` (the dataset's image
    folder, ``--images``; None: relative to the working directory). The one rule every reader of records uses."""
    path = Path(image)
    return path if path.is_absolute() or root is None else Path(root) / path


def open_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image at ``path`` as an upright RGB picture (first frame of an animation); ``ImageError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "image not found")
    if path.stat().st_size == 0:
        raise ImageError(path, "image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(path, f"image too large ({w}×{h} = {w * h / 1e6:.3g} megapixels, over "
                                           f"the {max_pixels / 1e6:.3g} MP cap; downscale it)")
                img.seek(0)  # animated GIF / WebP / APNG: the first frame
                img.load()  # decode everything now: a truncated file fails here, not mid-epoch
                upright = ImageOps.exif_transpose(img)
                return _to_rgb(upright)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # truncated, corrupt, unsupported mode
        raise ImageError(path, f"image cannot be decoded ({type(e).__name__}: {e})") from e


def image_problem(path: str | Path, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why the image at ``path`` cannot be used (the quarantine reason), or None when it can."""
    try:
        open_rgb(path, max_pixels)
    except ImageError as e:
        return f"{e.problem}: {e.path}"  # the kind first: rejected.jsonl counts reasons by their head
    return None
