"""Dermoscopy phantoms: a skin patch under polarised light with one pigmented lesion.

The lesion follows the ABCD rule's parameters, stored per image and each drawn on its own (with a
probability that depends on the class, so they correlate with it as in real lesions): asymmetry
(low-order radial harmonics), border irregularity (high-order harmonics and blur), colour
variegation (distinct colour zones of equal area), diameter in millimetres (the field of view is
20 mm); and the dermoscopic structures of the checklist: a blue-white veil, a regular or an
atypical (coarse, broken) pigment network, a sharp "stuck-on" border, milia-like cysts and
comedo-like openings.

- NV (nevus): mostly symmetric, regular border, 1-2 browns with a regular network, under 6 mm.
- MEL (melanoma): mostly asymmetric, irregular, 3-5 colours incl. black (blue-grey and white in a
  veil), over 6 mm, an atypical network or none.
- BKL (benign keratosis): tan to light brown (some darker), sharp border, milia-like cysts,
  comedo-like openings.

`attributes["items"]` holds the ground truth of every checklist item these parameters decide
(`isic:<label>:<n>`, `derm:anatomy|realism:<n>`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.defects import Defect, patch_box, patch_mask, record, vessel_texture
from craft_ray.data.phantoms.draw import (
    blobs,
    blur,
    grid,
    random_walk_curve,
    sigmoid,
    smooth_noise,
    strokes,
    to_uint8,
)

FIELD_MM = 20.0
CLASS_PROBS = {"NV": 0.45, "MEL": 0.35, "BKL": 0.2}
SKIN_TONES = np.array(
    [[0.93, 0.78, 0.70], [0.89, 0.70, 0.58], [0.80, 0.56, 0.42], [0.66, 0.45, 0.33]], np.float32
)
PALETTE = {
    "light_brown": (0.68, 0.45, 0.30),
    "dark_brown": (0.38, 0.22, 0.14),
    "black": (0.12, 0.09, 0.09),
    "blue_grey": (0.42, 0.47, 0.58),
    "red": (0.75, 0.30, 0.30),
    "white": (0.90, 0.88, 0.86),
    "tan": (0.78, 0.60, 0.42),
}
BROWNS = {"light_brown", "dark_brown"}
# probability of each criterion per class: P(asymmetric), P(irregular border), P(over 6 mm), ...
CRITERIA = {
    "asymmetric": {"MEL": 0.85, "NV": 0.08, "BKL": 0.2},
    "irregular": {"MEL": 0.8, "NV": 0.08, "BKL": 0.15},
    "large": {"MEL": 0.85, "NV": 0.1, "BKL": 0.55},
    "sharp": {"MEL": 0.0, "NV": 0.05, "BKL": 0.85},
    "cysts": {"MEL": 0.0, "NV": 0.05, "BKL": 0.8},
    "comedo": {"MEL": 0.0, "NV": 0.0, "BKL": 0.5},
}
ASYMMETRY, IRREGULAR = 0.2, 0.2  # drawn either above 0.3 or below 0.12: the item's cut in between
# Hallucination-like defects and the anatomy/realism items each violates.
DEFECTS: dict[str, tuple[str, ...]] = {
    "duplicated": ("derm:anatomy:1",),  # a second lesion beside the first
    "colour": ("derm:realism:3",),  # neon colours in the lesion
    "half": ("derm:anatomy:2",),  # the lesion ends at a straight edge: the skin looks cut and tiled
    "texture": ("derm:anatomy:2",),  # a square of fundus-like red vessels over skin and lesion
}


def patient(rng: np.random.Generator) -> dict[str, Any]:
    tone = int(rng.integers(0, len(SKIN_TONES)))
    return {"skin": SKIN_TONES[tone] + rng.normal(0, 0.02, 3).astype(np.float32), "phototype": tone + 1}


def _lesion_params(rng: np.random.Generator, label: str) -> dict[str, Any]:
    has = {name: bool(rng.random() < p[label]) for name, p in CRITERIA.items()}
    if label == "MEL":
        veil = bool(rng.random() < 0.45)
        colours = ["dark_brown", "black"] + (["blue_grey", "white"] if veil else [])
        if rng.random() < 0.7:
            colours.append(str(rng.choice(["light_brown", "red"])))
        network = "atypical" if rng.random() < 0.5 else "none"
    elif label == "NV":
        veil = False
        colours = ["light_brown"] if rng.random() < 0.5 else ["light_brown", "dark_brown"]
        network = "regular" if rng.random() < 0.85 else "none"
    else:
        veil = False
        if rng.random() < 0.2:  # a pigmented keratosis: darker, not tan
            colours = ["light_brown", "dark_brown"]
        else:
            colours = ["tan"] if rng.random() < 0.6 else ["tan", "light_brown"]
        network = "regular" if rng.random() < 0.1 else "none"
    small_low = 2.0 if label == "NV" else 4.0
    return {
        "asymmetry": rng.uniform(0.3, 0.8) if has["asymmetric"] else rng.uniform(0.0, 0.12),
        "border": rng.uniform(0.35, 0.8) if has["irregular"] else rng.uniform(0.0, 0.1),
        "diameter_mm": rng.uniform(6.5, 14.0) if has["large"] else rng.uniform(small_low, 5.5),
        "colours": colours,
        "veil": veil,
        "network": network,
        "sharp": has["sharp"],
        "milia_cysts": int(rng.integers(3, 9)) if has["cysts"] else 0,
        "comedos": int(rng.integers(2, 6)) if has["comedo"] else 0,
    }


def _items(p: dict[str, Any]) -> dict[str, bool]:
    asym, irregular = p["asymmetry"] >= ASYMMETRY, p["border"] >= IRREGULAR
    large, colours = p["diameter_mm"] > 6.0, set(p["colours"])
    return {
        "isic:MEL:0": asym,
        "isic:MEL:1": irregular,
        "isic:MEL:2": len(colours) >= 3,
        "isic:MEL:3": large,
        "isic:MEL:4": p["veil"],
        "isic:MEL:5": p["network"] == "atypical",
        "isic:NV:0": not asym,
        "isic:NV:1": not irregular,
        "isic:NV:2": colours <= BROWNS,
        "isic:NV:3": p["network"] == "regular",
        "isic:NV:4": not large,
        "isic:BKL:0": p["sharp"],
        "isic:BKL:1": p["milia_cysts"] > 0,
        "isic:BKL:2": p["comedos"] > 0,
        "isic:BKL:3": "tan" in colours and not colours & {"dark_brown", "black"},
    }


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any], defect: Defect | None = None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    label = str(rng.choice(list(CLASS_PROBS), p=list(CLASS_PROBS.values())))
    params = _lesion_params(rng, label)
    kind = defect.kind if defect else None

    shade = 1.0 + 0.05 * smooth_noise(rng, size, 0.5) - 0.08 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    texture = 0.025 * smooth_noise(rng, size, 0.015)
    skin = pat["skin"][None, None, :] * (shade + texture)[..., None]
    skin = skin * (1.0 - 0.06 * sigmoid(smooth_noise(rng, size, 0.08) * 3.0 - 4.0))[..., None]  # mottling

    cx, cy = 0.5 + rng.normal(0, 0.04), 0.5 + rng.normal(0, 0.04)
    radius = params["diameter_mm"] / FIELD_MM / 2.0
    theta = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(xx - cx, yy - cy)
    a, b = params["asymmetry"], params["border"]
    shape = (
        1.0
        + 0.45 * a * np.cos(theta - rng.uniform(0, 2 * np.pi))
        + 0.25 * a * np.cos(2 * theta + rng.uniform(0, 6.3))
    )
    for k in rng.integers(5, 14, 4):
        shape = shape + 0.07 * b * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    boundary = radius * shape * (1.0 + 0.15 * b * smooth_noise(rng, size, 0.05))
    sharpness = size * (1.5 if params["sharp"] else 0.9 - 0.5 * b)
    mask = sigmoid((boundary - rho) * sharpness)

    colours = params["colours"]
    zone_field = smooth_noise(rng, size, 0.12)
    centre_weight = np.clip(1.0 - rho / np.maximum(boundary, 1e-3), 0, 1)
    # zones of equal area inside the lesion, so every colour of the list shows
    order = zone_field + 2.0 * centre_weight
    inside = order[mask > 0.5]
    cuts = np.quantile(inside, np.linspace(0, 1, len(colours) + 1)[1:-1]) if inside.size else []
    zone_index = np.searchsorted(np.asarray(cuts, np.float32), order)
    # pigment reads darker than the skin around it whatever the phototype
    depth = 0.9 * min(1.0, float(np.mean(pat["skin"])) / 0.75)
    lesion = np.asarray([PALETTE[c] for c in colours], np.float32)[zone_index] * depth
    lesion = blur(lesion, 0.02, size) * (1.0 + 0.06 * smooth_noise(rng, size, 0.02))[..., None]
    if params["network"] == "regular":  # ridges of fine noise: a regular pigment web
        network = np.exp(-4.0 * smooth_noise(rng, size, 0.025) ** 2)
        lesion = lesion * (1.0 - 0.25 * network * centre_weight**0.3)[..., None]
    elif params["network"] == "atypical":  # coarse, thick, broken up in patches
        network = np.exp(-3.0 * smooth_noise(rng, size, 0.045) ** 2) * (smooth_noise(rng, size, 0.15) > 0)
        lesion = lesion * (1.0 - 0.45 * network * centre_weight**0.3)[..., None]
    if params["milia_cysts"]:
        n = params["milia_cysts"]
        ang, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.7, n) * radius
        cysts = np.minimum(blobs(size, cx + dist * np.cos(ang), cy + dist * np.sin(ang), 1.0, 0.012), 1.0)
        lesion = lesion * (1 - cysts[..., None]) + np.array(PALETTE["white"], np.float32) * cysts[..., None]
    if params["comedos"]:  # keratin-plugged openings: dark round dots
        n = params["comedos"]
        ang, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.6, n) * radius
        plugs = np.minimum(blobs(size, cx + dist * np.cos(ang), cy + dist * np.sin(ang), 1.0, 0.014), 1.0)
        lesion = lesion * (1 - 0.8 * plugs[..., None]) + np.float32(PALETTE["black"]) * 0.8 * plugs[..., None]
    if kind == "colour":  # neon pigment: the lesion's shading in a saturated, unnatural hue
        neon = np.float32([[0.1, 1.0, 0.2], [0.1, 0.4, 1.0], [1.0, 0.1, 0.9]])[int(defect.rng.integers(3))]
        lum = lesion.mean(axis=-1, keepdims=True)
        lesion = (0.55 + 0.45 * lum / max(float(lum.max()), 1e-3)) * neon
    if kind == "half":  # the lesion stops at a straight line through its centre
        phi = defect.rng.uniform(0, 2 * np.pi)
        mask = mask * (((xx - cx) * np.cos(phi) + (yy - cy) * np.sin(phi)) > 0)
    if kind == "duplicated":  # a second, smaller copy of the lesion beside it, skin between them
        small = min(0.07, radius)  # big enough to see, never bigger than the lesion
        ang = np.pi / 4 + np.pi / 2 * int(defect.rng.integers(4)) + defect.rng.uniform(-0.3, 0.3)  # a corner
        # the lesion's own reach towards that corner (an irregular border reaches up to ~2x its
        # radius): a copy at the nominal radius would merge into it, one lobulated lesion
        wedge = (mask > 0.5) & (np.abs(np.angle(np.exp(1j * (theta - ang)))) < 0.5)
        reach = float(rho[wedge].max()) if wedge.any() else radius
        gap = 0.05  # about 3 px of skin at 64 px
        room = 0.48 - np.hypot(cx - 0.5, cy - 0.5) - reach - gap  # to the dermatoscope's field stop
        r2 = float(np.clip(room / 2, small, max(0.35 * radius, small)))
        dist = reach + gap + r2
        cx2, cy2 = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
        second = sigmoid((r2 - np.hypot(xx - cx2, yy - cy2)) * size * 0.9)
        copy = np.roll(lesion, (int((cy2 - cy) * size), int((cx2 - cx) * size)), axis=(0, 1))
        lesion = lesion * (1 - second[..., None]) + copy * second[..., None]
        mask = np.maximum(mask, second)

    img = skin * (1 - mask[..., None]) + lesion * mask[..., None]
    if kind == "texture":  # another modality's texture: fundus-like red vessels in a square
        box = patch_box(defect.rng, 0.35, 0.5)
        vessels = vessel_texture(defect.rng, size, box) * patch_mask(defect.rng, size, box=box)
        img = img * (1 - 0.7 * vessels[..., None]) + np.float32([0.6, 0.05, 0.04]) * 0.7 * vessels[..., None]
    if rng.random() < 0.35:  # hairs
        hairs = [
            random_walk_curve(
                rng, (rng.uniform(0, 1), rng.uniform(0, 1)), rng.uniform(0, 2 * np.pi), 8, 0.06, 0.08
            )
            for _ in range(int(rng.integers(1, 4)))
        ]
        img = img * (1 - 0.6 * np.clip(strokes(size, hairs, 0.005, 1.0), 0, 1))[..., None]
    vignette = rng.random() < 0.5
    if vignette:  # the dermatoscope's circular field stop
        img = img * sigmoid((0.52 - np.hypot(xx - 0.5, yy - 0.5)) * size * 0.6)[..., None]

    tds = 1.3 * (2 * a) + 0.1 * (8 * b) + 0.5 * len(colours) + 0.5 * min(params["diameter_mm"] / 6.0, 5.0)
    attributes = {
        "asymmetry": round(float(a), 4),
        "border_irregularity": round(float(b), 4),
        "colours": colours,
        "n_colours": len(colours),
        "diameter_mm": round(float(params["diameter_mm"]), 3),
        "abcd_score": round(float(tds), 3),
        "phototype": pat["phototype"],
        "vignette": bool(vignette),
        "blue_white_veil": params["veil"],
        "network": params["network"],
        "sharp_border": params["sharp"],
        **({"milia_cysts": params["milia_cysts"]} if params["milia_cysts"] else {}),
        **({"comedo_openings": params["comedos"]} if params["comedos"] else {}),
    }
    record(attributes, "derm", _items(params), DEFECTS, defect)
    return to_uint8(img), [label], attributes
