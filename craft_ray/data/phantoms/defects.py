"""Implausible phantoms: one hallucination-like defect per image, and the checklist items it violates.

A generator lists its defects as `DEFECTS = {kind: (item ids violated, ...)}`; the kinds come from
`DEFECT_KINDS` (not every kind applies to every modality: skin has no laterality). Which images are
implausible, and the details of each defect, come from their own random stream
`default_rng([seed, 5, index])`, never from the image's stream: the same image with and without its
defect has the same labels, anatomy and findings, and implausible=0 gives exactly the plausible dataset.

Each image records ground truth for every anatomy and realism item of its modality in
`attributes["items"]` (met unless its defect violates it) next to its findings' items.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from craft_ray.data.phantoms.draw import blobs, smooth_noise, strokes

DEFECT_KINDS = ("duplicated", "missing", "laterality", "colour", "half", "texture")
DEFECT_STREAM = 5  # default_rng([seed, DEFECT_STREAM, index])


@dataclass(frozen=True)
class Defect:
    kind: str
    rng: np.random.Generator


def choose_defect(kinds: tuple[str, ...], seed: int, index: int, share: float) -> Defect | None:
    """The defect of image `index`, or None. Images are nested: a larger share keeps every image
    a smaller share made implausible, with the same defect."""
    if share <= 0.0:
        return None
    rng = np.random.default_rng([seed, DEFECT_STREAM, index])
    if rng.random() >= share:
        return None
    return Defect(str(kinds[int(rng.integers(len(kinds)))]), rng)


@lru_cache(maxsize=8)
def plausibility_item_ids(modality: str) -> tuple[str, ...]:
    """The static knowledge base's anatomy and realism item ids of a modality."""
    from craft_ray.knowledge.checklists import load_knowledge

    kb = load_knowledge()
    return tuple(i.id for i in (*kb.anatomy(modality), *kb.realism(modality)))


def record(
    attributes: dict, modality: str, items: dict[str, bool], defects: dict, defect: Defect | None
) -> dict:
    """Add `items` (findings' items, then every anatomy/realism item: met unless the defect violates
    it) and, for an implausible image, `implausible = {defect, violates}` to the attributes."""
    violated = set(defects[defect.kind]) if defect else set()
    items = {**items, **{i: i not in violated for i in plausibility_item_ids(modality)}}
    attributes["items"] = {k: bool(v) for k, v in items.items()}
    if defect:
        attributes["implausible"] = {"defect": defect.kind, "violates": sorted(violated)}
    return attributes


def tint(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A greyscale image (H, W) in [0, 1] as a colour-cast RGB image (H, W, 3): colour where a
    radiograph has none."""
    gains = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    high, low = rng.permutation(3)[:2]
    gains[high], gains[low] = 1.0, min(float(gains[low]), 0.45)  # one channel full, one well below
    return grey[..., None] * gains


def nuclei_texture(rng: np.random.Generator, size: int, density: int = 90) -> np.ndarray:
    """A histology-like field of dark round nuclei, in [0, 1] (1 = nucleus): another modality's
    texture to paste where it does not belong."""
    x, y = rng.uniform(0, 1, density), rng.uniform(0, 1, density)
    return np.clip(blobs(size, x, y, 1.0, 0.02), 0.0, 1.0)


def vessel_texture(rng: np.random.Generator, size: int, box: tuple[float, float, float]) -> np.ndarray:
    """Fundus-like branching dark vessels starting inside `box` (x0, y0, side), in [0, 1]."""
    from craft_ray.data.phantoms.draw import random_walk_curves

    x0, y0, side = box
    starts = np.stack([x0 + rng.uniform(0.1, 0.9, 8) * side, y0 + rng.uniform(0.1, 0.9, 8) * side], 1)
    curves = random_walk_curves(rng, starts, rng.uniform(0, 2 * np.pi, 8), 8, 0.04, 0.3)
    return np.clip(strokes(size, curves, 0.012, 1.0), 0.0, 1.0)


def rib_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Radiograph-like curved bright bands (ribs) over a mottled grey, in [0, 1]."""
    from craft_ray.data.phantoms.draw import grid

    yy, xx = grid(size)
    phase = rng.uniform(0, 1)
    bands = 0.5 + 0.5 * np.cos((yy + 0.15 * (xx - 0.5) ** 2 + phase) * 2 * np.pi / 0.08)
    return np.clip(0.55 * bands + 0.1 * smooth_noise(rng, size, 0.1) + 0.2, 0.0, 1.0)


def patch_box(rng: np.random.Generator, lo: float = 0.3, hi: float = 0.45) -> tuple[float, float, float]:
    """A random square (x0, y0, side) with side in [lo, hi] (normalised), inside the image."""
    side = float(rng.uniform(lo, hi))
    x0, y0 = rng.uniform(0.05, 0.95 - side, 2)
    return float(x0), float(y0), side


def patch_mask(
    rng: np.random.Generator, size: int, lo: float = 0.3, hi: float = 0.45, box=None
) -> np.ndarray:
    """A hard-edged square (random, or `box`) as a float mask."""
    from craft_ray.data.phantoms.draw import grid

    yy, xx = grid(size)
    x0, y0, side = box or patch_box(rng, lo, hi)
    return ((xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)).astype(np.float32)
