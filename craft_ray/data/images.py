"""Image decoding, resizing and PNG encoding, with errors that say what is wrong."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from craft_ray.errors import DataError


class ImageDecodeError(DataError):
    """An image file is missing, truncated or not an image."""


def _fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and centre-crop to size x size."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path: Path, mode: str, size: int | None = None) -> Image.Image:
    """Decode a file fully (so truncation shows here), convert to `mode` ('L' or 'RGB'), resize."""
    if not path.is_file():
        raise ImageDecodeError(f"file not found: {path}")
    try:
        with Image.open(path) as opened:
            opened.load()
            img = opened.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode image {path.name}: {exc}") from None
    if img.width == 0 or img.height == 0:
        raise ImageDecodeError(f"empty image {path.name}")
    return _fit_square(img, size) if size else img


def encode_png(img: Image.Image | np.ndarray) -> bytes:
    """Lossless PNG. zlib's run-length strategy after PNG's row filters encodes our images ~2x
    faster than the default level 6 at about the same size."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def decode_png(data: bytes, channels: int | None = None) -> np.ndarray:
    """PNG bytes -> uint8 array (H, W, C); channels=1 or 3 converts."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if channels is not None:
                img = img.convert("L" if channels == 1 else "RGB")
            arr = np.array(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageDecodeError(f"stored image bytes cannot be decoded: {exc}") from None
    return arr[..., None] if arr.ndim == 2 else arr
