"""Images sent over HTTP (base64 or data URLs): decoded with limits through the one image path
(`craft_ray.data.images`), errors that say what is wrong."""

from __future__ import annotations

import base64
import binascii

import torch

from craft_ray.data.images import (
    ImageDecodeError,
    ImagePixelsError,
    PreparedImage,
    load_8bit,
    prepare,
    to_tensor,
)
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


def decode_prepared(
    data: bytes, channels: int | None, max_pixels: int, size: int | None = None, crop: bool = True
) -> PreparedImage:
    """Image bytes (PNG, JPEG, TIFF; 8 or 16 bit) through the one image path
    (`craft_ray.data.images`): windowed to 8 bits, then (crop=True) the centre square resized to
    `size`, the model's working size. channels=None keeps grey images grey and makes everything
    else RGB; 1 or 3 converts. `max_pixels` bounds decoding (the header is checked first)."""
    try:
        if crop:
            return prepare(data, channels, size, max_pixels)
        img, info = load_8bit(data, channels, max_pixels)
        return PreparedImage(to_tensor(img), info)
    except ImagePixelsError as exc:
        raise ImageInputError(str(exc), status=413) from None
    except ImageDecodeError as exc:
        raise ImageInputError(str(exc)) from None


def decode_image(
    data: bytes, channels: int | None, max_pixels: int, *, size: int | None = None, crop: bool = False
) -> torch.Tensor:
    """`decode_prepared(...).pixels`; by default (crop=False) the 8-bit image at its own size."""
    return decode_prepared(data, channels, max_pixels, size, crop).pixels


def image_from_base64(
    value: str,
    channels: int | None,
    max_bytes: int,
    max_pixels: int,
    *,
    size: int | None = None,
    crop: bool = False,
) -> torch.Tensor:
    return decode_image(decode_base64(value, max_bytes), channels, max_pixels, size=size, crop=crop)


def prepared_from_base64(
    value: str, channels: int | None, max_bytes: int, max_pixels: int, size: int | None
) -> PreparedImage:
    """A base64 image as the model's input at `size`, with what was done to it."""
    return decode_prepared(decode_base64(value, max_bytes), channels, max_pixels, size)
