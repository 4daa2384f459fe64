"""The one image path (craft_ray.data.images): bit depth, mode, crop, resize, EXIF, limits, and the
property every scoring path rests on: a stored image gives the same model input as its original."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from craft_ray.data.images import (
    ImageDecodeError,
    ImagePixelsError,
    decode_png,
    encode_png,
    load_8bit,
    prepare,
    prepare_image,
)
from craft_ray.knowledge.labels import get_dataset
from craft_ray.serving.cas_requests import parse_cas_request
from craft_ray.serving.evaluator_config import Limits

# A 16-bit image and its 8-bit rendering, worked out by hand: min 500, max 5500, so
# v8 = floor((v - 500) * 255 / 5000 + 0.5); 1000 -> 25.5 -> 26, 2500 -> 127.5 -> 128, 4500 -> 229.5 -> 230.
WIDE = np.array([[500, 1000, 1500, 2500], [3000, 4500, 5000, 5500]], dtype=np.uint16)
BY_HAND = np.array([[0, 26, 51, 102], [128, 204, 230, 255]], dtype=np.uint8)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_png_is_windowed_to_the_8_bit_rendering_worked_out_by_hand():
    data = png(WIDE)
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # a real 16-bit PNG
    img, info = load_8bit(data, 1)
    assert img.mode == "L" and np.array_equal(np.asarray(img), BY_HAND)
    assert info.mode == "I;16" and info.window == (500.0, 5500.0)
    assert np.array_equal(decode_png(data, 1)[..., 0], BY_HAND)  # what the converters store
    # RGB datasets get the same grey values in all three channels
    assert np.array_equal(np.asarray(load_8bit(data, 3)[0]), np.repeat(BY_HAND[..., None], 3, axis=2))
    # what `convert("L")` used to make of it: every pixel above 255 clipped to white
    assert (np.asarray(Image.open(io.BytesIO(data)).convert("L")) == 255).mean() >= 0.75


def test_other_wide_modes_constant_images_and_8_bit_images():
    as_int = Image.fromarray(WIDE.astype(np.int32) - 500, "I")  # the same values, shifted, as 32-bit
    assert np.array_equal(np.asarray(load_8bit(as_int, 1)[0]), BY_HAND)
    floats = WIDE.astype(np.float32) / 5500
    floats[0, 0] = np.nan  # not a value: black, and outside the window
    img, info = load_8bit(Image.fromarray(floats, "F"), 1)
    expected = np.floor((floats - 1000 / 5500) * 255 / (1 - 1000 / 5500) + 0.5)
    assert np.asarray(img)[0, 0] == 0 and np.array_equal(np.asarray(img)[1], expected[1].astype(np.uint8))
    assert info.window == pytest.approx((1000 / 5500, 1.0))
    assert np.asarray(load_8bit(png(np.full((3, 5), 4000, np.uint16)), 1)[0]).max() == 0  # constant
    eight = np.array([[10, 20], [150, 200]], dtype=np.uint8)  # an 8-bit image is not stretched
    img, info = load_8bit(png(eight, "L"), 1)
    assert np.array_equal(np.asarray(img), eight) and info.window is None


def test_centre_square_then_resize_to_the_working_size():
    prepared = prepare(png(WIDE), 1)  # 4 x 2: the centre square is columns 1-2
    assert prepared.info.crop == (1, 0, 3, 2)
    assert torch.equal(prepared.pixels[0], torch.from_numpy(BY_HAND[:, 1:3].astype(np.float32)) / 255)
    rng = np.random.default_rng(0)
    wide = (rng.random((72, 90)) * 3000 + 800).astype(np.uint16)  # 90 x 72, 12-bit values
    lo, hi = float(wide.min()), float(wide.max())
    grey = np.floor((wide - lo) * 255 / (hi - lo) + 0.5)[:, 9:81] / 255  # by hand: window, centre crop
    reference = F.interpolate(
        torch.tensor(grey, dtype=torch.float32)[None, None], size=(32, 32), mode="bicubic", antialias=True
    ).clamp(0, 1)[0]
    got = prepare(png(wide), 1, 32)
    assert got.pixels.shape == (1, 32, 32)
    assert torch.allclose(got.pixels, reference, atol=1e-6)
    steps = got.info.as_json()["steps"]
    assert steps == [
        f"windowed I;16 values [{lo:g}, {hi:g}] to 8 bits",
        "centre-cropped 90x72 to 72x72",
        "resized 72x72 to 32x32",
    ]
    portrait = prepare(png(np.zeros((90, 64), np.uint8), "L"), 3, 16)  # 64 x 90: rows 13-76 kept
    assert portrait.info.crop == (0, 13, 64, 77) and portrait.pixels.shape == (3, 16, 16)


def test_a_stored_image_gives_the_same_model_input_as_its_original(tmp_path):
    """The converters and `cas score --images` store the 8-bit form losslessly; every path then
    prepares the model input from it, the CAS service from the original: the same pixels, exactly."""
    rng = np.random.default_rng(1)
    original = png((rng.random((80, 72)) * 60000).astype(np.uint16))
    stored = encode_png(load_8bit(original, 1)[0])
    assert torch.equal(prepare_image(stored, 1, 32), prepare_image(original, 1, 32))
    jpeg = tmp_path / "x.jpg"
    Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(jpeg, quality=90)
    stored = encode_png(load_8bit(jpeg, 3)[0])
    assert torch.equal(prepare_image(stored, 3, 32), prepare_image(jpeg, 3, 32))


def test_exif_orientation_is_applied():
    img = Image.new("L", (4, 2))
    img.putpixel((0, 0), 255)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif.tobytes())
    upright, _ = load_8bit(buf.getvalue(), 1)
    assert upright.size == (2, 4) and np.asarray(upright)[0, 1] == 255  # the corner pixel moved


def test_errors_name_the_file_tried_and_big_images_are_refused_before_decoding(tmp_path):
    with pytest.raises(ImageDecodeError, match=f"file not found: {tmp_path / 'gone.png'}"):
        load_8bit(tmp_path / "gone.png", 1)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png(WIDE)[:40])
    with pytest.raises(ImageDecodeError, match=f"cannot decode image {broken}"):
        load_8bit(broken, 1)
    with pytest.raises(ImagePixelsError, match="200x200 = 40000 pixels, over the decoding limit of 100"):
        prepare(png(np.zeros((200, 200), np.uint8), "L"), 1, 32, max_pixels=100)


def test_the_service_brings_a_full_resolution_16_bit_radiograph_to_its_working_size():
    """Default limits: a 2544 x 3056 16-bit PNG (what a DICOM export holds) is accepted, windowed,
    cropped and resized, and the answer says so; it used to be refused (8 MB, 4.2 MP)."""
    rng = np.random.default_rng(2)
    big = (rng.random((3056, 2544)) * 4000).astype(np.uint16)
    data = png(big)
    assert len(data) > 8 * 2**20  # over the old byte limit
    body = json.dumps(
        {"dataset": "chexpert", "items": [{"image": base64.b64encode(data).decode(), "labels": ["Edema"]}]}
    )
    parsed = parse_cas_request(
        body.encode(), {"chexpert": get_dataset("chexpert")}, Limits(), {"chexpert": 32}
    )
    item = parsed.items[0]
    assert item.image.shape == (1, 32, 32)
    assert item.preprocessing["crop"] == [0, 256, 2544, 2800] and item.preprocessing["size"] == 32
    assert item.preprocessing["steps"][1:] == [
        "centre-cropped 2544x3056 to 2544x2544",
        "resized 2544x2544 to 32x32",
    ]


def test_a_tensor_handed_to_the_evaluator_is_cropped_not_stretched():
    """Direct callers of the Python API meet the same policy: a non-square tensor scores as its
    centre square (written out by hand), not as the square it would be stretched to."""
    from craft_ray.cas import CASEvaluator
    from craft_ray.models import build_vlm

    evaluator = CASEvaluator("chexpert", build_vlm("tiny"))
    x = torch.rand(2, 1, 32, 44, generator=torch.Generator().manual_seed(0))
    labels = [["Cardiomegaly"], ["Edema"]]
    with torch.no_grad():
        whole = evaluator.score(x, labels, evaluate=True).total
        square = evaluator.score(x[..., 6:38].contiguous(), labels, evaluate=True).total
        stretched = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)  # stays in [0, 1]
        stretched = evaluator.score(stretched, labels, evaluate=True).total
    assert torch.allclose(whole, square, atol=1e-6) and not torch.allclose(whole, stretched, atol=1e-4)
