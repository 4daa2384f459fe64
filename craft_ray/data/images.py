"""The one image path: any input image -> 8-bit storage form -> the model's input.

Every place an image enters craft-ray calls this module: the converters and `cas score --images`
(storage form), `cas calibrate` / `cas score`, the CAS evaluator service, the MLLM engine,
evaluation and training (model input). One policy, so the same file gives the same pixels and
the same score on every path:

1. decode fully (truncation shows here), apply the EXIF orientation;
2. bit depth: wide greyscale (16-bit `I;16*`, 32-bit `I`, float `F`, e.g. PadChest or DICOM
   exports) is windowed min-max to 8 bits, v8 = floor((v - min) * 255 / (max - min) + 0.5)
   (a constant image becomes 0); 8-bit images are left as they are;
3. mode: greyscale (`L`) for one-channel datasets, RGB for three (alpha dropped);
   -- this is the storage form (`load_8bit`): what datasets keep, losslessly, as PNG --
4. centre crop to a square of the shorter side (integer box, at the stored resolution);
5. resize to the working size (`size`): antialiased bicubic in torch, the same filter as the
   VLM's own preprocessing, clamped to [0, 1].

Why crop, not pad or stretch: the diffusion models learn from centre crops (the converters'
`--size`, diffusers' own training scripts) and CLIP's processor crops the same way, so real
images reach the scorer framed like the generated images they are compared with; padding would
put borders in real images that generated ones never have, stretching would distort anatomy.
The cost: a non-square image loses its margins on the long side.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from craft_ray.errors import DataError

WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
GREY_MODES = ("1", "L", "LA", "La", *WIDE_GREY_MODES)
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageDecodeError(DataError):
    """An image file is missing, truncated or not an image."""


@dataclass(frozen=True)
class Preprocessing:
    """What the image path did to one image (the CAS service returns it with each result)."""

    width: int  # as decoded (after the EXIF orientation)
    height: int
    mode: str  # PIL mode as decoded, e.g. 'I;16', 'L', 'RGB'
    window: tuple[float, float] | None  # wide greyscale: the (min, max) mapped to 0..255
    crop: tuple[int, int, int, int] | None  # centre square (left, top, right, bottom); None: square already
    size: int | None  # side of the model input; None: storage form or the crop's own side

    def as_json(self) -> dict:
        steps = []
        if self.window is not None:
            steps.append(f"windowed {self.mode} values [{self.window[0]:g}, {self.window[1]:g}] to 8 bits")
        if self.crop is not None:
            side = self.crop[2] - self.crop[0]
            steps.append(f"centre-cropped {self.width}x{self.height} to {side}x{side}")
        side = min(self.width, self.height)
        if self.size is not None and self.size != side:
            steps.append(f"resized {side}x{side} to {self.size}x{self.size}")
        return {
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "window": list(self.window) if self.window else None,
            "crop": list(self.crop) if self.crop else None,
            "size": self.size if self.size is not None else side,
            "steps": steps,
        }


@dataclass
class PreparedImage:
    pixels: torch.Tensor  # (C, S, S) float32 in [0, 1]
    info: Preprocessing


class ImagePixelsError(ImageDecodeError):
    """The header announces more pixels than allowed (refused before decoding)."""

    def __init__(self, width: int, height: int, max_pixels: int):
        super().__init__(
            f"image is {width}x{height} = {width * height} pixels, over the decoding limit of {max_pixels}"
        )


def open_image(source: bytes | Path | Image.Image, max_pixels: int | None = None) -> Image.Image:
    """Decode fully (so a truncated file fails here, not later) and apply the EXIF orientation.
    `max_pixels` is checked on the header, before the pixels are decoded (a decompression-bomb guard)."""
    if isinstance(source, Image.Image):
        return ImageOps.exif_transpose(source)
    if isinstance(source, Path) and not source.is_file():
        raise ImageDecodeError(f"file not found: {source}")
    is_file = isinstance(source, Path)  # errors name a file by the full path tried
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            handle = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(handle) as opened:
                if max_pixels is not None and opened.width * opened.height > max_pixels:
                    raise ImagePixelsError(opened.width, opened.height, max_pixels)
                opened.load()
                ImageOps.exif_transpose(opened, in_place=True)
                img = opened
    except ImagePixelsError:
        raise
    except UnidentifiedImageError:
        known = "not an image in a known format (PNG, JPEG, TIFF, ...)"
        raise ImageDecodeError(
            f"cannot decode image {source}: {known}" if is_file else f"bytes are {known}"
        ) from None
    except (*DECODE_ERRORS, Image.DecompressionBombWarning) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ImageDecodeError(
            f"cannot decode image {source}: {problem}"
            if is_file
            else f"bytes are not a decodable image ({problem})"
        ) from None
    if img.width == 0 or img.height == 0:
        raise ImageDecodeError(f"{source if is_file else 'image'} has no pixels")
    return img


def window_to_8bit(img: Image.Image) -> tuple[Image.Image, tuple[float, float] | None]:
    """Wide greyscale -> 8-bit `L` by min-max windowing (see the module docstring); other modes as
    they are. Returns the image and the window used (None when none was needed)."""
    if img.mode not in WIDE_GREY_MODES:
        return img, None
    values = np.asarray(img)
    finite = np.isfinite(values) if values.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        raise ImageDecodeError(f"{img.mode} image has no finite pixel values")
    valid = values[finite] if finite is not None else values
    lo, hi = float(valid.min()), float(valid.max())
    if hi > lo:
        # multiply before dividing: integer inputs then round exactly at .5 (25.5 -> 26, not 25)
        scaled = np.floor((values.astype(np.float64) - lo) * 255.0 / (hi - lo) + 0.5)
    else:
        scaled = np.zeros(values.shape)
    if finite is not None:
        scaled[~finite] = 0.0
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L"), (lo, hi)


def to_mode(img: Image.Image, channels: int | None) -> Image.Image:
    """`L` for channels=1, RGB for 3; None keeps greyscale grey and makes everything else RGB."""
    if channels is None:
        channels = 1 if img.mode in GREY_MODES else 3
    mode = "L" if channels == 1 else "RGB"
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La"):  # alpha dropped, colours kept
        img = img.convert("RGB" if img.mode.startswith("RGB") else "L")
    return img if img.mode == mode else img.convert(mode)


def load_8bit(
    source: bytes | Path | Image.Image, channels: int | None, max_pixels: int | None = None
) -> tuple[Image.Image, Preprocessing]:
    """Steps 1-3: the storage form, an 8-bit `L` or RGB image at its own size."""
    img = open_image(source, max_pixels)
    mode = img.mode
    img, window = window_to_8bit(img)
    img = to_mode(img, channels)
    return img, Preprocessing(img.width, img.height, mode, window, None, None)


def centre_square(img: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    w, h = img.size
    if w == h:
        return img, None
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    return img.crop(box), box


def centre_square_tensor(pixels: torch.Tensor) -> torch.Tensor:
    """Step 4 on a tensor (..., H, W): the same box as `centre_square`, differentiable (a view). For
    models handed tensors directly, so a non-square tensor is cropped, never stretched."""
    h, w = pixels.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return pixels[..., top : top + side, left : left + side]


def resize_square(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """([B,] C, S, S) -> ([B,] C, size, size): antialiased bicubic (the VLM's filter), clamped to
    [0, 1]. Each image of a batch is resized on its own, exactly as alone."""
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    batch = pixels if pixels.ndim == 4 else pixels[None]
    resized = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    resized = resized.clamp_(0.0, 1.0)
    return resized if pixels.ndim == 4 else resized[0]


def to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.array(img)  # a writable copy: torch refuses to wrap read-only buffers
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def prepare(
    source: bytes | Path | Image.Image,
    channels: int | None,
    size: int | None = None,
    max_pixels: int | None = None,
) -> PreparedImage:
    """Steps 1-5: any image -> the model input (C, size, size) float in [0, 1]. size=None keeps
    the side of the centre square."""
    if size is not None and size < 1:
        raise ValueError(f"size must be positive, got {size}")
    img, info = load_8bit(source, channels, max_pixels)
    img, box = centre_square(img)
    pixels = to_tensor(img)
    if size is not None:
        pixels = resize_square(pixels, size)
    return PreparedImage(pixels, Preprocessing(info.width, info.height, info.mode, info.window, box, size))


def prepare_image(
    source: bytes | Path | Image.Image, channels: int | None, size: int | None = None
) -> torch.Tensor:
    """The model input of any image: `prepare(...).pixels`."""
    return prepare(source, channels, size).pixels


def to_uint8(pixels: torch.Tensor) -> Image.Image:
    """(C, H, W) in [0, 1] -> an 8-bit `L` or RGB image (round half up)."""
    arr = torch.floor(pixels.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0], "L") if arr.shape[-1] == 1 else Image.fromarray(arr, "RGB")


def load_image(path: Path, mode: str, size: int | None = None) -> Image.Image:
    """A file as stored in a dataset: the storage form (size=None) or the model input at `size`
    quantised to 8 bits (the converters' `--size`)."""
    channels = 1 if mode == "L" else 3
    if size is None:
        return load_8bit(path, channels)[0]
    return to_uint8(prepare(path, channels, size).pixels)


def encode_png(img: Image.Image | np.ndarray) -> bytes:
    """Lossless PNG. zlib's run-length strategy after PNG's row filters encodes our images ~2x
    faster than the default level 6 at about the same size."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def decode_png(data: bytes, channels: int | None = None) -> np.ndarray:
    """Stored image bytes -> uint8 array (H, W, C) in the storage form (steps 1-3)."""
    try:
        img = load_8bit(data, channels)[0]
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"stored image bytes cannot be decoded: {exc}") from None
    arr = np.array(img)
    return arr[..., None] if arr.ndim == 2 else arr


__all__ = [
    "ImageDecodeError",
    "ImagePixelsError",
    "PreparedImage",
    "Preprocessing",
    "decode_png",
    "encode_png",
    "load_8bit",
    "load_image",
    "prepare",
    "prepare_image",
    "to_uint8",
    "window_to_8bit",
]
