"""Images sent over HTTP (base64 or data URLs): decoded with limits, errors that say what is wrong."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from craft_ray.errors import CraftError


class ImageInputError(CraftError):
    """An image in a request is not usable; `status` is the HTTP status a service answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def split_data_url(value: str) -> str:
    """'data:image/png;base64,AAAA' or bare base64 -> the base64 payload."""
    if value.startswith("data:"):
        header, sep, payload = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageInputError("image data URL must look like data:image/png;base64,<payload>")
        return payload
    if value.startswith(("http://", "https://", "file:")):
        raise ImageInputError("image URLs are not fetched: send the image inline as base64 or a data: URL")
    return value


def decode_base64(value: str, max_bytes: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise ImageInputError("image must be a non-empty base64 string")
    payload = split_data_url(value.strip())
    # a cheap bound before decoding: base64 carries 3 bytes per 4 characters
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ImageInputError(f"image is over the limit of {max_bytes} bytes", status=413)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("image is not valid base64") from None
    if len(data) > max_bytes:
        raise ImageInputError(f"image is {len(data)} bytes, over the limit of {max_bytes}", status=413)
    return data


def decode_image(data: bytes, channels: int | None, max_pixels: int) -> torch.Tensor:
    """Image bytes (PNG, JPEG, ...) -> float tensor (C, H, W) in [0, 1]. channels=None keeps grey
    images grey and makes everything else RGB; 1 or 3 converts."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size  # from the header: check before decoding the pixels
                if width * height > max_pixels:
                    raise ImageInputError(
                        f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                        status=413,
                    )
                img.load()
                mode = {1: "L", 3: "RGB"}.get(channels or 0) or (
                    "L" if img.mode in ("L", "I;16", "I") else "RGB"
                )
                arr = np.asarray(img.convert(mode))
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError("bytes are not an image in a known format (PNG, JPEG, ...)") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ImageInputError(f"bytes are not a decodable image ({type(exc).__name__}: {exc})") from None
    if arr.size == 0:
        raise ImageInputError("image has no pixels")
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)


def image_from_base64(value: str, channels: int | None, max_bytes: int, max_pixels: int) -> torch.Tensor:
    return decode_image(decode_base64(value, max_bytes), channels, max_pixels)
