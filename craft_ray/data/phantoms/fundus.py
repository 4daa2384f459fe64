"""Colour fundus photograph phantoms graded for diabetic retinopathy (international scale, simplified).

A round orange-red fundus on black, optic disc with a cup, darker macula, and vessel arcades
branching from the disc. Lesions, counted and placed per image (positions give the quadrants and
the macula's involvement), each kind drawn on its own within what the grade allows:

- grade 0 (No DR): none.
- grade 1 (Mild NPDR): microaneurysms only.
- grade 2 (Moderate NPDR): microaneurysms with a few haemorrhages and/or hard exudates, sometimes
  a cotton-wool spot.
- grade 3 (Severe NPDR, the 4-2-1 rule simplified): many haemorrhages in all four quadrants or
  venous beading (or both), usually cotton-wool spots, no new vessels.
- grade 4 (Proliferative DR): neovascularisation at the disc or elsewhere, mostly on top of NPDR
  lesions, sometimes a preretinal haemorrhage or fibrovascular tissue at the disc.

`attributes["items"]` holds the ground truth of every checklist item these lesions decide
(`fundus:<grade>:<n>`, `fundus:anatomy|realism:<n>`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.defects import Defect, nuclei_texture, patch_mask, record
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
MACULA_R = 0.08  # lesions within this distance of the fovea involve the macula
MANY_HAEMORRHAGES = 10
# Hallucination-like defects and the anatomy/realism items each violates.
DEFECTS: dict[str, tuple[str, ...]] = {
    "duplicated": ("fundus:anatomy:0",),  # a second optic disc
    "missing": ("fundus:anatomy:0", "fundus:anatomy:2"),  # no optic disc: vessels leave from nothing
    "laterality": ("fundus:anatomy:1", "fundus:anatomy:3"),  # the macula nasal to the disc, off the arcades
    "colour": ("fundus:realism:0",),  # a greyscale fundus
    "half": ("fundus:anatomy:3",),  # the arcades drawn above the macula only
    "texture": ("fundus:realism:0",),  # a square of purple histology nuclei on the retina
}


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


def _lesion_plan(rng: np.random.Generator, grade: int) -> dict[str, Any]:
    """Counts of each lesion kind and the grade's structural signs, drawn within the grade."""
    plan = dict(
        microaneurysms=0,
        haemorrhages=0,
        hard_exudates=0,
        cotton_wool_spots=0,
        neovascularisation=0,
        four_quadrants=False,
        venous_beading=False,
        preretinal_haemorrhage=False,
        fibrovascular=False,
    )
    if grade == 1:
        plan["microaneurysms"] = int(rng.integers(1, 6))
    elif grade == 2:
        plan["microaneurysms"] = int(rng.integers(4, 15))
        plan["haemorrhages"] = int(rng.integers(1, 7)) if rng.random() < 0.8 else 0
        plan["hard_exudates"] = int(rng.integers(0, 10)) if plan["haemorrhages"] else int(rng.integers(2, 10))
        plan["cotton_wool_spots"] = int(rng.integers(1, 3)) if rng.random() < 0.15 else 0
    elif grade >= 3:
        npdr = grade == 3 or rng.random() < 0.85  # proliferative disease mostly on top of NPDR
        plan["four_quadrants"] = npdr and rng.random() < 0.75
        plan["venous_beading"] = (grade == 3 and not plan["four_quadrants"]) or rng.random() < 0.35
        plan["microaneurysms"] = int(rng.integers(4, 15)) if npdr else int(rng.integers(1, 6))
        if plan["four_quadrants"]:
            plan["haemorrhages"] = int(rng.integers(14, 26))
        elif npdr:
            plan["haemorrhages"] = int(rng.integers(2, 8))
        plan["hard_exudates"] = int(rng.integers(5, 20)) if npdr else 0
        plan["cotton_wool_spots"] = int(rng.integers(2, 6)) if npdr and rng.random() < 0.8 else 0
        if grade == 4:
            plan["neovascularisation"] = int(rng.integers(1, 3))
            plan["preretinal_haemorrhage"] = bool(rng.random() < 0.4)
            plan["fibrovascular"] = bool(rng.random() < 0.4)
    return plan


def _items(plan: dict[str, Any], quadrants: int, macula_lesions: int) -> dict[str, bool]:
    ma, haem, he = plan["microaneurysms"], plan["haemorrhages"], plan["hard_exudates"]
    nv, beading = plan["neovascularisation"] > 0, plan["venous_beading"]
    severe_haem = haem >= MANY_HAEMORRHAGES and quadrants == 4
    return {
        "fundus:No DR:0": ma == 0 and haem == 0,
        "fundus:No DR:1": he == 0,
        "fundus:No DR:2": not nv and not beading,
        "fundus:No DR:3": macula_lesions == 0,
        "fundus:Mild NPDR:0": ma > 0,
        "fundus:Mild NPDR:1": haem == 0 and not plan["preretinal_haemorrhage"],
        "fundus:Mild NPDR:2": he == 0,
        "fundus:Mild NPDR:3": not nv and not beading,
        "fundus:Moderate NPDR:0": ma > 0 and haem > 0,
        "fundus:Moderate NPDR:1": he > 0,
        "fundus:Moderate NPDR:2": haem > 0 and not severe_haem,
        "fundus:Moderate NPDR:3": not nv,
        "fundus:Severe NPDR:0": severe_haem,
        "fundus:Severe NPDR:1": plan["cotton_wool_spots"] > 0,
        "fundus:Severe NPDR:2": beading,
        "fundus:Severe NPDR:3": not nv,
        "fundus:Proliferative DR:0": nv,
        "fundus:Proliferative DR:1": plan["preretinal_haemorrhage"],
        "fundus:Proliferative DR:2": haem > 0 or he > 0,
        "fundus:Proliferative DR:3": plan["fibrovascular"],
    }


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any], defect: Defect | None = None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    grade = int(rng.choice(5, p=GRADE_PROBS))
    eye = str(rng.choice(["left", "right"]))
    kind = defect.kind if defect else None
    side = -1 if eye == "right" else 1  # disc on the nasal side
    disc = (0.5 + side * pat["disc_offset"], 0.5 + rng.normal(0, 0.02))
    macula = (0.5 - side * 0.04, 0.5 + rng.normal(0, 0.015))
    fovea = (disc[0] + side * 0.12, macula[1]) if kind == "laterality" else macula  # beyond the disc

    rho = np.hypot(xx - 0.5, yy - 0.5)
    field = sigmoid((FIELD_R - rho) * size * 1.2)
    falloff = 1.0 - 0.55 * (rho / FIELD_R) ** 2 + 0.05 * smooth_noise(rng, size, 0.08)
    img = pat["pigment"][None, None, :] * falloff[..., None]

    mac = np.exp(-(((xx - fovea[0]) ** 2 + (yy - fovea[1]) ** 2) / (2 * 0.06**2)))
    img = img * (1 - 0.35 * mac)[..., None]
    plan = _lesion_plan(rng, grade)
    trunks, branches = _vessel_tree(rng, disc, side)
    if kind == "half":  # the inferior vessels missing: the two trunks that leave upwards and their branches
        trunks, branches = trunks[:2], branches[:6]
    vessels = np.clip(strokes(size, trunks, 0.011, 1.0) + 0.7 * strokes(size, branches, 0.006, 1.0), 0, 1)
    if plan["venous_beading"]:  # calibre swelling and narrowing along the trunks, like beads
        beads = blobs(size, trunks[:, 2::2, 0], trunks[:, 2::2, 1], 1.0, 0.011)
        vessels = np.clip(vessels + 0.8 * np.clip(beads, 0, 1), 0, 1)
    img = (
        img * (1 - 0.55 * vessels[..., None])
        + np.array([0.45, 0.04, 0.02], np.float32) * 0.3 * vessels[..., None]
    )

    disc_r = 0.065 + rng.normal(0, 0.004)
    discs = [disc]
    if kind == "duplicated":
        discs.append((disc[0], float(np.clip(disc[1] + defect.rng.choice([-1, 1]) * 0.22, 0.2, 0.8))))
    elif kind == "missing":
        discs = []
    disc_colour = np.array([0.98, 0.80, 0.55], np.float32)
    for dx, dy in discs:
        dist = np.hypot(xx - dx, yy - dy)
        disc_mask = sigmoid((disc_r - dist) * size * 0.8)
        cup = sigmoid((disc_r * 0.45 - dist) * size * 0.6)
        img = (
            img * (1 - disc_mask[..., None])
            + (disc_colour * (0.85 + 0.15 * cup[..., None])) * disc_mask[..., None]
        )
        img = img * (1 - 0.4 * vessels[..., None] * disc_mask[..., None])

    red = np.array([0.45, 0.05, 0.04], np.float32)
    positions = []  # (x, y) of every microaneurysm, haemorrhage and exudate
    if plan["microaneurysms"]:
        mx, my = _scatter(rng, plan["microaneurysms"], macula, 0.25)
        positions.append((mx, my))
        dots = np.clip(blobs(size, mx, my, 1.0, 0.007), 0, 1)
        img = img * (1 - dots[..., None]) + red * dots[..., None]
    quadrants = 0
    if plan["haemorrhages"]:
        n = plan["haemorrhages"]
        if plan["four_quadrants"]:  # severe: spread over all four quadrants
            quads = np.arange(n) % 4
            hx = 0.5 + np.where(quads % 2 == 0, -1, 1) * rng.uniform(0.06, 0.3, n)
            hy = 0.5 + np.where(quads < 2, -1, 1) * rng.uniform(0.06, 0.3, n)
        else:
            hx, hy = _scatter(rng, n, macula, 0.28)
        positions.append((hx, hy))
        quadrants = len(set(zip((hx > 0.5).tolist(), (hy > 0.5).tolist(), strict=True)))
        blots = np.clip(blobs(size, hx, hy, 1.0, rng.uniform(0.014, 0.024)), 0, 1)
        img = img * (1 - blots[..., None]) + red * 0.8 * blots[..., None]
    if plan["hard_exudates"]:
        ex, ey = _scatter(rng, plan["hard_exudates"], macula, 0.16)
        positions.append((ex, ey))
        exu = np.clip(blobs(size, ex, ey, 1.0, 0.008), 0, 1)
        img = img * (1 - exu[..., None]) + np.array([0.95, 0.85, 0.35], np.float32) * exu[..., None]
    if plan["cotton_wool_spots"]:
        cx_, cy_ = _scatter(rng, plan["cotton_wool_spots"], (0.5, 0.5), 0.3)
        cws = np.clip(0.7 * blobs(size, cx_, cy_, 1.0, 0.025), 0, 0.7)
        img = img * (1 - cws[..., None]) + np.array([0.93, 0.88, 0.8], np.float32) * cws[..., None]
    if plan["neovascularisation"]:
        centres = []
        for _ in range(plan["neovascularisation"]):  # at the disc (NVD) or elsewhere (NVE)
            cx_, cy_ = disc if rng.random() < 0.6 else _scatter(rng, 1, (0.5, 0.5), 0.25)
            centres.append(np.tile(np.ravel([cx_, cy_]), (6, 1)))
        starts = np.concatenate(centres) + rng.normal(0, 0.03, (6 * len(centres), 2))
        loops = random_walk_curves(rng, starts, rng.uniform(0, 2 * np.pi, len(starts)), 6, 0.012, 0.9)
        nv = np.clip(strokes(size, loops, 0.004, 1.0), 0, 1)
        img = img * (1 - 0.7 * nv[..., None]) + red * 0.7 * nv[..., None]
    if plan["fibrovascular"]:  # a greyish-white veil over the disc's rim
        veil = np.exp(-(((np.hypot(xx - disc[0], yy - disc[1]) - disc_r * 1.2) / 0.025) ** 2))
        veil = veil * (0.5 + 0.5 * (smooth_noise(rng, size, 0.04) > -0.3))
        img = img * (1 - 0.6 * veil[..., None]) + np.float32([0.85, 0.82, 0.78]) * 0.6 * veil[..., None]
    if plan["preretinal_haemorrhage"]:  # boat-shaped: a flat upper edge over a round lower border
        px, py = _scatter(rng, 1, macula, 0.2)
        boat = sigmoid((0.06 - np.hypot((xx - px[0]) * 0.8, yy - py[0])) * size) * (yy > py[0] - 0.01)
        img = img * (1 - 0.9 * boat[..., None]) + np.float32([0.5, 0.03, 0.03]) * 0.9 * boat[..., None]
    if kind == "texture":  # another modality's texture: purple histology nuclei in a square
        tex = nuclei_texture(defect.rng, size, 260) * patch_mask(defect.rng, size)
        img = img * (1 - 0.8 * tex[..., None]) + np.float32([0.35, 0.15, 0.45]) * 0.8 * tex[..., None]

    img = blur(img, 0.002, size) * field[..., None]
    if kind == "colour":
        img = np.repeat(img @ np.float32([0.299, 0.587, 0.114])[:, None], 3, axis=2)
    lx = np.concatenate([p[0] for p in positions]) if positions else np.empty(0)
    ly = np.concatenate([p[1] for p in positions]) if positions else np.empty(0)
    at_macula = int(np.sum(np.hypot(lx - fovea[0], ly - fovea[1]) < MACULA_R))
    attributes = {
        "dr_grade": grade,
        "eye": eye,
        **{k: plan[k] for k in ("microaneurysms", "haemorrhages", "hard_exudates", "cotton_wool_spots")},
        "neovascularisation": plan["neovascularisation"],
        "haemorrhage_quadrants": quadrants,
        "venous_beading": plan["venous_beading"],
        "preretinal_haemorrhage": plan["preretinal_haemorrhage"],
        "fibrovascular": plan["fibrovascular"],
        "macula_lesions": at_macula,
    }
    record(attributes, "fundus", _items(plan, quadrants, at_macula), DEFECTS, defect)
    return to_uint8(img), [DR_GRADES[grade]], attributes
