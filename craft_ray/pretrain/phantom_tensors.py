"""Phantom images held in memory as tensors (64 px phantoms generate at ~400/s, so pretraining
draws fresh data instead of reading parquet), plus the non-medical images that teach a VLM what
its modality is not: distractor pictures and corrupted acquisitions.

Seeds: every image depends only on (seed, index) through the phantom generators, so the data of a
pretraining run is named by (modality, n, seed, size) in its model card.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from craft_ray.data.phantoms import GENERATORS, patient_of_image
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import dataset_for_modality

# The distractor prompts of the realism dimension (craft_ray.cas.dimensions.DISTRACTORS), in order.
DISTRACTOR_KINDS = ("natural", "cartoon", "text", "blank")
CORRUPTIONS = ("colour", "text", "exposure", "tiles", "blur", "flip")


@dataclass
class PhantomSet:
    modality: str
    images: torch.Tensor  # (N, 3, H, W) uint8; greyscale modalities repeated over channels
    label_sets: list[list[str]]
    seed: int

    def __len__(self) -> int:
        return len(self.label_sets)

    def floats(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        images = self.images if index is None else self.images[index]
        return images.float() / 255.0

    def targets(self, labels: list[str]) -> torch.Tensor:
        """(N, len(labels)) 0/1 ground truth."""
        return torch.tensor([[float(lab in s) for lab in labels] for s in self.label_sets])


def make_phantom_set(modality: str, n: int, seed: int, size: int = 64) -> PhantomSet:
    """The first `n` images of the phantom dataset (modality, seed, size), as
    `craft data phantom` writes them (same images, same labels)."""
    if modality not in GENERATORS:
        raise ConfigError(f"unknown phantom modality '{modality}' (known: {', '.join(GENERATORS)})")
    gen, spec = GENERATORS[modality], dataset_for_modality(modality)
    patients = patient_of_image(n, seed)
    images = np.empty((n, 3, size, size), np.uint8)
    label_sets, params, current = [], None, -1
    for i in range(n):
        pid = int(patients[i])
        if pid != current:
            params, current = gen.patient(np.random.default_rng([seed, 1, pid])), pid
        pixels, labels, _ = gen.image(np.random.default_rng([seed, 0, i]), size, params)
        images[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        label_sets.append(sorted(labels, key=spec.labels.index))
    return PhantomSet(modality, torch.from_numpy(images), label_sets, seed)


def _text_image(rng: np.random.Generator, size: int, base: np.ndarray | None = None) -> np.ndarray:
    canvas = Image.fromarray(base) if base is not None else Image.new("RGB", (size, size), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
    lines = int(rng.integers(1, 3)) if base is not None else int(rng.integers(3, 7))
    shade = int(rng.integers(200, 256)) if base is not None else int(rng.integers(0, 60))
    for k in range(lines):
        text = "".join(rng.choice(list(letters), int(rng.integers(5, 12))))
        y = int(rng.integers(0, size - 10)) if base is not None else 2 + k * (size // lines)
        draw.text((int(rng.integers(0, size // 4)), y), text, fill=(shade, shade, shade))
    return np.asarray(canvas)


def _distractor(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == "blank":
        value = rng.uniform(0.2, 0.8)
        img = np.full((size, size, 3), value) + rng.normal(0, 0.01, (size, size, 1))
    elif kind == "natural":
        horizon = rng.uniform(0.3, 0.7) + 0.05 * np.sin(xx * rng.uniform(3, 12))
        sky = np.array([0.45, 0.65, 0.95]) * (1 - 0.3 * yy[..., None])
        ground = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.7), rng.uniform(0.1, 0.3)])
        texture = 0.1 * np.cos(xx * rng.uniform(20, 60) + yy * rng.uniform(20, 60))[..., None]
        img = np.where((yy > horizon)[..., None], ground + texture, sky)
    elif kind == "cartoon":
        canvas = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = rng.integers(0, size - 8, 2)
            w, h = rng.integers(8, size // 2, 2)
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
                box, fill=fill, outline=(0, 0, 0), width=2
            )
        return np.asarray(canvas)
    else:
        return _text_image(rng, size)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_distractors(n: int, seed: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n non-medical images (N, 3, H, W) uint8 and their kind index into DISTRACTOR_KINDS."""
    kinds = np.arange(n) % len(DISTRACTOR_KINDS)
    images = np.stack(
        [
            _distractor(DISTRACTOR_KINDS[k], np.random.default_rng([seed, 3, i]), size).transpose(2, 0, 1)
            for i, k in enumerate(kinds)
        ]
    )
    return torch.from_numpy(images), torch.from_numpy(kinds)


def corrupt(
    images: torch.Tensor, seed: int, greyscale: bool, kinds: tuple[str, ...] = CORRUPTIONS
) -> torch.Tensor:
    """Implausible acquisitions of the same phantoms (uint8 in, uint8 out): colour in a greyscale
    modality (or grey in a colour one), burnt-in text, bad exposure, tiled seams, defocus and, for
    chest radiographs, mirrored anatomy. One corruption per image, cycling through `kinds`."""
    out = images.float() / 255.0
    rng = np.random.default_rng([seed, 4])
    for i in range(len(out)):
        kind, img = kinds[i % len(kinds)], out[i]
        if kind == "colour":
            if greyscale:
                tint = torch.tensor(rng.uniform(0.2, 1.0, 3), dtype=img.dtype).view(3, 1, 1)
                img = img * tint / tint.max()
            else:
                img = img.mean(dim=0, keepdim=True).expand(3, -1, -1)
        elif kind == "text":
            base = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            img = torch.from_numpy(_text_image(rng, img.shape[-1], base).copy()).permute(2, 0, 1) / 255.0
        elif kind == "exposure":
            img = img ** float(rng.choice([0.25, 4.0])) if rng.random() < 0.7 else 0.5 + 0.2 * img
        elif kind == "tiles":
            half = img.shape[-1] // 2
            img = torch.roll(img, shifts=(half, half), dims=(1, 2))
        elif kind == "blur":
            img = torch.nn.functional.avg_pool2d(img[None], 7, stride=1, padding=3, count_include_pad=False)[
                0
            ]
        elif kind == "flip":
            img = img.flip(-1)
        out[i] = img.clamp(0, 1)
    return (out * 255).round().to(torch.uint8)
