"""Dermoscopy phantoms: a skin patch under polarised light with one pigmented lesion.

The lesion follows the ABCD rule's parameters, stored per image: asymmetry (low-order radial
harmonics), border irregularity (high-order harmonics and blur), colour variegation (number of
distinct colour zones), diameter in millimetres (the field of view is 20 mm).

- NV (nevus): symmetric, regular border, 1-2 browns with a reticular network, 2-6 mm.
- MEL (melanoma): asymmetric, irregular border, 3-5 colours incl. black, blue-grey, red, white, 6-14 mm.
- BKL (benign keratosis): tan to light brown, sharp "stuck-on" border, milia-like cysts, 4-10 mm.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def patient(rng: np.random.Generator) -> dict[str, Any]:
    tone = int(rng.integers(0, len(SKIN_TONES)))
    return {"skin": SKIN_TONES[tone] + rng.normal(0, 0.02, 3).astype(np.float32), "phototype": tone + 1}


def _lesion_params(rng: np.random.Generator, label: str) -> dict[str, Any]:
    if label == "MEL":
        colours = ["light_brown", "dark_brown", "black", "blue_grey", "red", "white"]
        n = int(rng.integers(3, 6))
        chosen = ["dark_brown", "black"] + [
            str(c) for c in rng.choice(colours[:1] + colours[3:], n - 2, replace=False)
        ]
        return {
            "asymmetry": rng.uniform(0.3, 0.8),
            "border": rng.uniform(0.35, 0.8),
            "colours": chosen,
            "diameter_mm": rng.uniform(6.0, 14.0),
        }
    if label == "NV":
        chosen = ["light_brown"] if rng.random() < 0.5 else ["light_brown", "dark_brown"]
        return {
            "asymmetry": rng.uniform(0.0, 0.12),
            "border": rng.uniform(0.0, 0.1),
            "colours": chosen,
            "diameter_mm": rng.uniform(2.0, 6.0),
        }
    chosen = ["tan"] if rng.random() < 0.6 else ["tan", "light_brown"]
    return {
        "asymmetry": rng.uniform(0.0, 0.3),
        "border": rng.uniform(0.1, 0.3),
        "colours": chosen,
        "diameter_mm": rng.uniform(4.0, 10.0),
    }


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any]
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    label = str(rng.choice(list(CLASS_PROBS), p=list(CLASS_PROBS.values())))
    params = _lesion_params(rng, label)

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
    sharpness = size * (1.5 if label == "BKL" else 0.9 - 0.5 * b)
    mask = sigmoid((boundary - rho) * sharpness)

    colours = params["colours"]
    zone_field = smooth_noise(rng, size, 0.12)
    centre_weight = np.clip(1.0 - rho / np.maximum(boundary, 1e-3), 0, 1)
    zone_index = np.clip(
        ((zone_field + 2.0 * centre_weight) * 0.6 * len(colours)).astype(int), 0, len(colours) - 1
    )
    # pigment reads darker than the skin around it whatever the phototype
    depth = 0.9 * min(1.0, float(np.mean(pat["skin"])) / 0.75)
    lesion = np.asarray([PALETTE[c] for c in colours], np.float32)[zone_index] * depth
    lesion = blur(lesion, 0.02, size) * (1.0 + 0.06 * smooth_noise(rng, size, 0.02))[..., None]
    if label == "NV" or rng.random() < 0.5 * (1 - b):
        network = np.exp(-4.0 * smooth_noise(rng, size, 0.025) ** 2)  # ridges of noise: a pigment web
        lesion = lesion * (1.0 - 0.25 * network * centre_weight**0.3)[..., None]
    if label == "BKL":
        n_cysts = int(rng.integers(3, 9))
        ang, dist = rng.uniform(0, 2 * np.pi, n_cysts), rng.uniform(0, 0.7, n_cysts) * radius
        cysts = np.minimum(blobs(size, cx + dist * np.cos(ang), cy + dist * np.sin(ang), 1.0, 0.012), 1.0)
        lesion = lesion * (1 - cysts[..., None]) + np.array(PALETTE["white"], np.float32) * cysts[..., None]
        params["milia_cysts"] = n_cysts

    img = skin * (1 - mask[..., None]) + lesion * mask[..., None]
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
        **({"milia_cysts": params["milia_cysts"]} if "milia_cysts" in params else {}),
    }
    return to_uint8(img), [label], attributes
