"""Colour fundus photograph phantoms graded for diabetic retinopathy (international scale, simplified).

A round orange-red fundus on black, optic disc with a cup, darker macula, and vessel arcades
branching from the disc. Lesions, counted and stored per image:

- grade 0 (No DR): none.
- grade 1 (Mild NPDR): microaneurysms only.
- grade 2 (Moderate NPDR): microaneurysms, a few haemorrhages, hard exudates.
- grade 3 (Severe NPDR): many haemorrhages in all four quadrants, cotton-wool spots, no new vessels.
- grade 4 (Proliferative DR): neovascularisation at the disc or elsewhere, on top of NPDR lesions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.draw import (
    blobs,
    blur,
    grid,
    random_walk_curves,
    sigmoid,
    smooth_noise,
    strokes,
    to_uint8,
)
from craft_ray.knowledge.labels import DR_GRADES

GRADE_PROBS = (0.3, 0.2, 0.2, 0.15, 0.15)
FIELD_R = 0.46


def patient(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "pigment": np.array([0.78, 0.33, 0.14], np.float32) * rng.uniform(0.8, 1.1)
        + rng.normal(0, 0.02, 3).astype(np.float32),
        "disc_offset": rng.uniform(0.17, 0.22),
    }


def _vessel_tree(
    rng: np.random.Generator, disc: tuple[float, float], side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Temporal arcades leave the disc up and down and curve round the macula; nasal vessels are
    shorter; each trunk sprouts branches. Returns (trunks, branches) as (N, K, 2) point arrays."""
    toward_macula = -side
    vertical = np.array([-1.0, -1.0, 1.0, 1.0])
    temporal = np.array([True, False, True, False])
    headings = np.where(
        temporal, np.arctan2(vertical, 0.3 * toward_macula), np.arctan2(0.8 * vertical, -toward_macula)
    ) + rng.normal(0, 0.09, 4)
    curls = np.where(temporal, -vertical * toward_macula * 0.16, 0.0)
    trunks = random_walk_curves(rng, np.tile(disc, (4, 1)), headings, 9, 0.045, 0.05, curls)
    trunks[~temporal, 6:] = trunks[~temporal, 5:6]  # nasal vessels stop after 5 steps
    starts = trunks[:, 2:8:2].reshape(-1, 2)
    angles = np.repeat(headings, 3) + rng.choice([-1, 1], len(starts)) * rng.uniform(0.5, 1.0, len(starts))
    branches = random_walk_curves(rng, starts, angles, 4, 0.03, 0.2)
    return trunks, branches


def _scatter(
    rng: np.random.Generator, n: int, centre: tuple[float, float], spread: float
) -> tuple[np.ndarray, np.ndarray]:
    ang = rng.uniform(0, 2 * np.pi, n)
    dist = np.sqrt(rng.uniform(0, 1, n)) * spread
    return centre[0] + dist * np.cos(ang), centre[1] + dist * np.sin(ang)


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any]
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    grade = int(rng.choice(5, p=GRADE_PROBS))
    eye = str(rng.choice(["left", "right"]))
    side = -1 if eye == "right" else 1  # disc on the nasal side
    disc = (0.5 + side * pat["disc_offset"], 0.5 + rng.normal(0, 0.02))
    macula = (0.5 - side * 0.04, 0.5 + rng.normal(0, 0.015))

    rho = np.hypot(xx - 0.5, yy - 0.5)
    field = sigmoid((FIELD_R - rho) * size * 1.2)
    falloff = 1.0 - 0.55 * (rho / FIELD_R) ** 2 + 0.05 * smooth_noise(rng, size, 0.08)
    img = pat["pigment"][None, None, :] * falloff[..., None]

    mac = np.exp(-(((xx - macula[0]) ** 2 + (yy - macula[1]) ** 2) / (2 * 0.06**2)))
    img = img * (1 - 0.35 * mac)[..., None]
    trunks, branches = _vessel_tree(rng, disc, side)
    vessels = np.clip(strokes(size, trunks, 0.011, 1.0) + 0.7 * strokes(size, branches, 0.006, 1.0), 0, 1)
    img = (
        img * (1 - 0.55 * vessels[..., None])
        + np.array([0.45, 0.04, 0.02], np.float32) * 0.3 * vessels[..., None]
    )

    disc_r = 0.065 + rng.normal(0, 0.004)
    disc_mask = sigmoid((disc_r - np.hypot(xx - disc[0], yy - disc[1])) * size * 0.8)
    cup = sigmoid((disc_r * 0.45 - np.hypot(xx - disc[0], yy - disc[1])) * size * 0.6)
    disc_colour = np.array([0.98, 0.80, 0.55], np.float32)
    img = (
        img * (1 - disc_mask[..., None])
        + (disc_colour * (0.85 + 0.15 * cup[..., None])) * disc_mask[..., None]
    )
    img = img * (1 - 0.4 * vessels[..., None] * disc_mask[..., None])

    counts = {
        "microaneurysms": 0,
        "haemorrhages": 0,
        "hard_exudates": 0,
        "cotton_wool_spots": 0,
        "neovascularisation": 0,
    }
    if grade >= 1:
        counts["microaneurysms"] = int(rng.integers(1, 6) if grade == 1 else rng.integers(4, 15))
    if grade >= 2:
        counts["haemorrhages"] = int(rng.integers(1, 7) if grade == 2 else rng.integers(14, 26))
        counts["hard_exudates"] = int(rng.integers(0, 10) if grade == 2 else rng.integers(5, 20))
    if grade >= 3:
        counts["cotton_wool_spots"] = int(rng.integers(2, 6))
    if grade == 4:
        counts["neovascularisation"] = int(rng.integers(1, 3))

    red = np.array([0.45, 0.05, 0.04], np.float32)
    if counts["microaneurysms"]:
        mx, my = _scatter(rng, counts["microaneurysms"], macula, 0.25)
        dots = np.clip(blobs(size, mx, my, 1.0, 0.007), 0, 1)
        img = img * (1 - dots[..., None]) + red * dots[..., None]
    if counts["haemorrhages"]:
        n = counts["haemorrhages"]
        if grade >= 3:  # severe: spread over all four quadrants
            quads = np.arange(n) % 4
            hx = 0.5 + np.where(quads % 2 == 0, -1, 1) * rng.uniform(0.06, 0.3, n)
            hy = 0.5 + np.where(quads < 2, -1, 1) * rng.uniform(0.06, 0.3, n)
        else:
            hx, hy = _scatter(rng, n, macula, 0.28)
        blots = np.clip(blobs(size, hx, hy, 1.0, rng.uniform(0.014, 0.024)), 0, 1)
        img = img * (1 - blots[..., None]) + red * 0.8 * blots[..., None]
    if counts["hard_exudates"]:
        ex, ey = _scatter(rng, counts["hard_exudates"], macula, 0.16)
        exu = np.clip(blobs(size, ex, ey, 1.0, 0.008), 0, 1)
        img = img * (1 - exu[..., None]) + np.array([0.95, 0.85, 0.35], np.float32) * exu[..., None]
    if counts["cotton_wool_spots"]:
        cx_, cy_ = _scatter(rng, counts["cotton_wool_spots"], (0.5, 0.5), 0.3)
        cws = np.clip(0.7 * blobs(size, cx_, cy_, 1.0, 0.025), 0, 0.7)
        img = img * (1 - cws[..., None]) + np.array([0.93, 0.88, 0.8], np.float32) * cws[..., None]
    if counts["neovascularisation"]:
        centres = []
        for _ in range(counts["neovascularisation"]):  # at the disc (NVD) or elsewhere (NVE)
            cx_, cy_ = disc if rng.random() < 0.6 else _scatter(rng, 1, (0.5, 0.5), 0.25)
            centres.append(np.tile(np.ravel([cx_, cy_]), (6, 1)))
        starts = np.concatenate(centres) + rng.normal(0, 0.03, (6 * len(centres), 2))
        loops = random_walk_curves(rng, starts, rng.uniform(0, 2 * np.pi, len(starts)), 6, 0.012, 0.9)
        nv = np.clip(strokes(size, loops, 0.004, 1.0), 0, 1)
        img = img * (1 - 0.7 * nv[..., None]) + red * 0.7 * nv[..., None]

    img = blur(img, 0.002, size) * field[..., None]
    attributes = {"dr_grade": grade, "eye": eye, **counts}
    return to_uint8(img), [DR_GRADES[grade]], attributes
