"""Phantom images held in memory as tensors (64 px phantoms generate at ~400/s, so pretraining
draws fresh data instead of reading parquet), with their per-item ground truth and, optionally, a
share of implausible phantoms; plus the non-medical images that teach a VLM what its modality is
not: distractor pictures and corrupted acquisitions (each with the anatomy/realism items it
violates).

Seeds: every image depends only on (seed, index, implausible share) through the phantom
generators, so the data of a pretraining run is named by (modality, n, seed, size, implausible)
in its model card.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from craft_ray.data.phantoms import GENERATORS, check_share, patient_of_image
from craft_ray.data.phantoms.defects import choose_defect
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import dataset_for_modality

# The distractor prompts of the realism dimension (craft_ray.cas.dimensions.DISTRACTORS), in order.
DISTRACTOR_KINDS = ("natural", "cartoon", "text", "blank")
CORRUPTIONS = ("colour", "text", "exposure", "tiles", "blur", "flip")
# The anatomy/realism items each corruption violates, per modality. A mirrored skin, retina or
# tissue patch is as plausible as the original (the other eye, another field), so only the chest
# is flipped; tiles scramble a radiograph's or a retina's whole layout.
CORRUPTION_ITEMS: dict[str, dict[str, tuple[str, ...]]] = {
    "chest": {
        "colour": ("chest:realism:0",),
        "text": ("chest:realism:1",),
        "exposure": ("chest:realism:2",),
        "tiles": tuple(f"chest:anatomy:{i}" for i in range(6)) + ("chest:realism:3",),
        "blur": ("chest:realism:2",),
        "flip": ("chest:anatomy:2",),
    },
    "derm": {
        "colour": ("derm:realism:3",),
        "text": ("derm:realism:1",),
        "exposure": ("derm:realism:0",),
        "tiles": ("derm:anatomy:1", "derm:anatomy:2"),
        "blur": ("derm:realism:2",),
    },
    "fundus": {
        "colour": ("fundus:realism:0",),
        "text": ("fundus:realism:2",),
        "exposure": ("fundus:realism:1",),
        "tiles": tuple(f"fundus:anatomy:{i}" for i in range(5)),
        "blur": ("fundus:realism:3",),
    },
    "histo": {
        "colour": ("histo:realism:0",),
        "text": ("histo:realism:2",),
        "exposure": ("histo:realism:0",),
        "tiles": ("histo:anatomy:2",),
        "blur": ("histo:realism:1",),
    },
}


@dataclass
class PhantomSet:
    modality: str
    images: torch.Tensor  # (N, 3, H, W) uint8; greyscale modalities repeated over channels
    label_sets: list[list[str]]
    seed: int
    items: list[dict[str, bool]] = field(default_factory=list)  # per image: item id -> met
    defects: list[str | None] = field(default_factory=list)  # per image: its defect, or None

    def __len__(self) -> int:
        return len(self.label_sets)

    def floats(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        images = self.images if index is None else self.images[index]
        return images.float() / 255.0

    def targets(self, labels: list[str]) -> torch.Tensor:
        """(N, len(labels)) 0/1 ground truth."""
        return torch.tensor([[float(lab in s) for lab in labels] for s in self.label_sets])

    def item_targets(self, item_ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, len(item_ids)) 0/1 item ground truth and a (N, len(item_ids)) mask of where the
        generator recorded one (items it does not draw have none)."""
        truth = torch.tensor([[float(row.get(i, False)) for i in item_ids] for row in self.items])
        known = torch.tensor([[i in row for i in item_ids] for row in self.items])
        return truth.reshape(len(self), len(item_ids)), known.reshape(len(self), len(item_ids))

    @property
    def implausible(self) -> torch.Tensor:
        """(N,) bool: the images that carry a defect."""
        return torch.tensor([d is not None for d in self.defects], dtype=torch.bool)


def make_phantom_set(
    modality: str, n: int, seed: int, size: int = 64, implausible: float = 0.0
) -> PhantomSet:
    """The first `n` images of the phantom dataset (modality, seed, size, implausible), as
    `craft data phantom` writes them (same images, labels and item ground truth; a colour defect
    on a greyscale modality keeps its colour here)."""
    if modality not in GENERATORS:
        raise ConfigError(f"unknown phantom modality '{modality}' (known: {', '.join(GENERATORS)})")
    check_share(implausible)
    gen, spec = GENERATORS[modality], dataset_for_modality(modality)
    kinds = tuple(gen.DEFECTS)
    patients = patient_of_image(n, seed)
    images = np.empty((n, 3, size, size), np.uint8)
    label_sets, items, defects, params, current = [], [], [], None, -1
    for i in range(n):
        pid = int(patients[i])
        if pid != current:
            params, current = gen.patient(np.random.default_rng([seed, 1, pid])), pid
        defect = choose_defect(kinds, seed, i, implausible)
        pixels, labels, attributes = gen.image(np.random.default_rng([seed, 0, i]), size, params, defect)
        images[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        label_sets.append(sorted(labels, key=spec.labels.index))
        items.append(attributes["items"])
        defects.append(attributes.get("implausible", {}).get("defect"))
    return PhantomSet(modality, torch.from_numpy(images), label_sets, seed, items, defects)


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


def corrupt(images: torch.Tensor, seed: int, modality: str) -> tuple[torch.Tensor, list[tuple[str, ...]]]:
    """Implausible acquisitions of the same phantoms (uint8 in, uint8 out): colour in a greyscale
    modality (or grey in a colour one), burnt-in text, bad exposure, tiled seams, defocus and, for
    chest radiographs, mirrored anatomy. One corruption per image, cycling through the modality's
    kinds (`CORRUPTION_ITEMS`); returns the images and, per image, the items it violates."""
    kinds = CORRUPTION_ITEMS[modality]
    greyscale = dataset_for_modality(modality).channels == 1
    names = list(kinds)
    out = images.float() / 255.0
    rng = np.random.default_rng([seed, 4])
    violated = []
    for i in range(len(out)):
        kind, img = names[i % len(names)], out[i]
        violated.append(kinds[kind])
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
    return (out * 255).round().to(torch.uint8), violated
