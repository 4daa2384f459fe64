"""Frontal chest radiograph phantoms (greyscale; bright = dense, dark = air).

Anatomy: torso, two lungs with vascular markings fading to the periphery, domed hemidiaphragms
with sharp costophrenic angles, heart and mediastinum, trachea, spine, posterior and anterior
ribs, clavicles. Findings, each drawn from a stored parameter:

- Cardiomegaly: cardiothoracic ratio `ctr` > 0.5 (normal 0.38-0.47).
- Pleural Effusion: homogeneous basal fluid with a meniscus rising laterally, blunting the angle.
- Pneumothorax: apical/lateral lucency without lung markings, bounded by a thin visceral pleural line.
- Lung Opacity: focal opacities inside the lung fields.
- Support Devices: endotracheal tube, central venous catheter, ECG electrodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.draw import (
    blobs,
    blur,
    ellipse_radius,
    grid,
    random_walk_curves,
    sigmoid,
    smooth_noise,
    soft_ellipse,
    strokes,
    to_uint8,
)

FINDING_PROBS = {
    "Cardiomegaly": 0.3,
    "Lung Opacity": 0.3,
    "Pneumothorax": 0.15,
    "Pleural Effusion": 0.3,
    "Support Devices": 0.25,
}
PATHOLOGIES = ("Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion")


def patient(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "body_w": rng.uniform(0.44, 0.48),
        "lung_dx": rng.uniform(0.19, 0.21),
        "lung_rx": rng.uniform(0.145, 0.165),
        "lung_ry": rng.uniform(0.28, 0.32),
        "lung_cy": rng.uniform(0.44, 0.48),
        "dome_h": rng.uniform(0.04, 0.07),
        "ctr_normal": rng.uniform(0.38, 0.47),
        "rib_phase": rng.uniform(-0.012, 0.012),
        "gamma": rng.uniform(0.85, 1.15),
    }


def _lung(size: int, cx: float, cy: float, rx: float, ry: float, dome_h: float) -> np.ndarray:
    yy, xx = grid(size)
    base = cy + 0.78 * ry  # costophrenic level
    dome = base - dome_h * np.clip(1.0 - ((xx - cx) / rx) ** 2, 0.0, 1.0)
    return soft_ellipse(size, cx, cy, rx, ry, edge=0.012) * sigmoid((dome - yy) * size * 0.8)


def _markings(rng: np.random.Generator, size: int, hila: list[tuple[float, float, int]]) -> np.ndarray:
    """Vessels branching from each hilum (x, y, lateral direction) to the periphery, thinning out."""
    starts, headings = [], []
    for hx, hy, lateral in hila:
        spread = np.linspace(-1.3, 1.3, 7) + rng.normal(0, 0.1, 7)
        starts.append(np.tile((hx, hy), (7, 1)))
        headings.append((0.0 if lateral > 0 else np.pi) + lateral * spread * 0.9)
    trunks = random_walk_curves(
        rng, np.concatenate(starts), np.concatenate(headings), steps=6, step=0.025, turn=0.25
    )
    twig_starts = trunks[:, 2:5].reshape(-1, 2)
    twigs = random_walk_curves(rng, twig_starts, rng.uniform(0, 2 * np.pi, len(twig_starts)), 3, 0.02, 0.4)
    weights = np.concatenate([np.full(len(trunks), 0.07), np.full(len(twigs), 0.04)])
    return strokes(size, [*trunks, *twigs], width=0.01, weight=weights)


def _ribs(size: int, cx: float, phase: float, lateral: float, bottom: float) -> np.ndarray:
    """Posterior ribs arch laterally and down from the spine; anterior ribs slope down medially."""
    yy, xx = grid(size)
    u = np.maximum(np.abs(xx - cx) - 0.035, 0.0)
    post = np.array([0.13 + 0.058 * k + phase for k in range(10)], dtype=np.float32)[:, None, None]
    ant = np.array([0.16 + 0.07 * k + phase for k in range(6)], dtype=np.float32)[:, None, None]
    d_post = np.abs(yy - (post - 0.08 * u + 1.1 * u**2)).min(axis=0)
    d_ant = np.abs(yy - (ant + 0.12 - 0.4 * u)).min(axis=0) + (u < 0.08) * 1.0
    ribs = sigmoid((0.011 - d_post) * size * 3.0) + 0.45 * sigmoid((0.008 - d_ant) * size * 3.0)
    cage = sigmoid((lateral - np.abs(xx - cx)) * size) * sigmoid((bottom - yy) * size * 0.5)
    return ribs * cage


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any]
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    present = {name: bool(rng.random() < p) for name, p in FINDING_PROBS.items()}
    jx, jy = rng.normal(0, 0.006, 2).tolist()  # Python floats keep the float32 maps float32
    cx0, cy0 = 0.5 + jx, jy

    # a superellipse: square shoulders and flanks, as a torso filling the detector
    r4 = np.square(np.square((xx - cx0) / pat["body_w"])) + np.square(np.square((yy - 0.6 - cy0) / 0.62))
    torso = sigmoid((1.0 - r4) * size * 0.15)
    torso = np.maximum(torso, soft_ellipse(size, cx0, 0.02, 0.11, 0.12, edge=0.02))
    img = 0.04 + 0.44 * torso + 0.03 * torso * smooth_noise(rng, size, 0.15)

    rx, ry, cy = pat["lung_rx"], pat["lung_ry"], pat["lung_cy"] + cy0
    sides = {"right": cx0 - pat["lung_dx"], "left": cx0 + pat["lung_dx"]}  # patient's right = image left
    lungs, lung_radius = {}, {}
    for side, lcx in sides.items():
        lift = 0.02 if side == "right" else 0.0  # liver raises the right hemidiaphragm
        rxs = rx if side == "right" else rx * 0.95
        lungs[side] = _lung(size, lcx, cy - lift * 0.5, rxs, ry, pat["dome_h"])
        lung_radius[side] = ellipse_radius(size, lcx, cy, rxs, ry)

    attributes: dict[str, Any] = {}
    ptx_region = np.zeros((size, size), np.float32)
    pleural_line = np.zeros((size, size), np.float32)
    if present["Pneumothorax"]:
        side = str(rng.choice(["right", "left"]))
        extent = float(rng.uniform(0.18, 0.35))
        upper = sigmoid((cy + 0.08 - yy) * size * 0.5)
        r = lung_radius[side]
        ptx_region = lungs[side] * sigmoid((r - (1.0 - extent)) * size * 0.6) * upper
        pleural_line = lungs[side] * np.exp(-(((r - (1.0 - extent)) * size * 0.35) ** 2)) * upper
        attributes.update(pneumothorax_side=side, pneumothorax_extent=round(extent, 4))

    lung = lungs["right"] + lungs["left"]
    markings = _markings(
        rng, size, [(sides["right"] + 0.06, cy + 0.03, -1), (sides["left"] - 0.06, cy + 0.03, 1)]
    )
    lung_value = 0.12 + markings + 0.015 * smooth_noise(rng, size, 0.03)
    lung_value = lung_value * (1 - ptx_region) + 0.05 * ptx_region + 0.1 * pleural_line
    img = img * (1 - lung) + lung_value * lung

    if present["Lung Opacity"]:
        count = int(rng.integers(1, 4))
        side_x = rng.choice(list(sides.values()), count)
        ox = side_x + rng.uniform(-0.5, 0.5, count) * rx
        oy = cy + rng.uniform(-0.55, 0.45, count) * ry
        radii = rng.uniform(0.03, 0.06, count)
        opac = sum(blobs(size, ox[i : i + 1], oy[i : i + 1], 0.28, radii[i]) for i in range(count))
        img = img + np.minimum(opac, 0.32) * lung * (1 - ptx_region)
        attributes.update(opacity_count=count, opacity_radius_mean=round(float(radii.mean()), 4))

    if present["Pleural Effusion"]:
        side_choice = str(rng.choice(["right", "left", "both"], p=[0.4, 0.4, 0.2]))
        fraction = float(rng.uniform(0.15, 0.35))
        for side in ("right", "left") if side_choice == "both" else (side_choice,):
            lcx = sides[side]
            level = cy + 0.78 * ry - fraction * 2 * ry
            lateral = np.clip((xx - lcx) / rx * (-1 if side == "right" else 1), -1, 1.5)
            meniscus = level - 0.09 * np.clip(lateral + 0.2, 0, None) ** 2
            fluid = lungs[side] * sigmoid((yy - meniscus) * size * 0.9)
            img = img * (1 - fluid) + (0.46 + 0.01 * smooth_noise(rng, size, 0.1)) * fluid
        attributes.update(effusion_side=side_choice, effusion_fraction=round(fraction, 4))

    ctr = (
        float(rng.uniform(0.54, 0.66))
        if present["Cardiomegaly"]
        else float(pat["ctr_normal"] + rng.normal(0, 0.01))
    )
    thorax_w = 2 * (pat["lung_dx"] + rx)
    heart_rx = ctr * thorax_w / 2
    heart_ry = 0.09 + 0.3 * heart_rx
    base = cy + 0.78 * ry
    heart = soft_ellipse(
        size, cx0 + 0.3 * heart_rx, base - 0.6 * heart_ry, heart_rx, heart_ry, angle=-0.3, edge=0.01
    )
    mediastinum = soft_ellipse(size, cx0, 0.3 + cy0, 0.06, 0.26, edge=0.01)
    dense = np.maximum(heart, mediastinum)
    img = img * (1 - dense) + 0.5 * dense
    attributes["ctr"] = round(ctr, 4)

    trachea = soft_ellipse(size, cx0, 0.2 + cy0, 0.016, 0.15, edge=0.006)
    img = img - 0.16 * trachea
    spine = sigmoid((0.034 - np.abs(xx - cx0)) * size * 2.0) * torso
    vertebrae = 0.5 + 0.5 * np.cos((yy - cy0) * 2 * np.pi / 0.055)
    img = img + spine * (0.04 + 0.04 * vertebrae)
    lateral = pat["lung_dx"] + rx + 0.03
    img = img + 0.075 * _ribs(size, cx0, pat["rib_phase"] + cy0, lateral, cy + 0.8 * ry) * torso
    clavicles = [
        np.array([[cx0 - 0.04, 0.19], [cx0 - 0.17, 0.15], [cx0 - 0.3, 0.13]]),
        np.array([[cx0 + 0.04, 0.19], [cx0 + 0.17, 0.15], [cx0 + 0.3, 0.13]]),
    ]
    img = img + strokes(size, clavicles, width=0.024, weight=0.13)

    if present["Support Devices"]:
        devices = sorted(set(rng.choice(["ett", "cvc", "ecg"], int(rng.integers(1, 3)))))
        lines = []
        if "ett" in devices:
            tip = float(rng.uniform(0.27, 0.33))
            lines.append(np.array([[cx0 + 0.01, 0.0], [cx0 + 0.005, tip]]))
        if "cvc" in devices:
            lines.append(
                np.array([[cx0 - 0.3, 0.15], [cx0 - 0.12, 0.2], [cx0 - 0.04, 0.27], [cx0 - 0.03, 0.42]])
            )
        img = img + strokes(size, lines, width=0.01, weight=0.45)
        if "ecg" in devices:
            ex, ey = rng.uniform(0.2, 0.8, 3), rng.uniform(0.12, 0.8, 3)
            img = img + np.minimum(blobs(size, ex, ey, 0.6, 0.016), 0.5)
        attributes["devices"] = devices

    img = img + 0.01 * rng.standard_normal((size, size), dtype=np.float32)  # quantum mottle
    img = blur(img, 0.003, size)
    img = np.clip(img, 0, 1) ** pat["gamma"]
    labels = [name for name in PATHOLOGIES if present[name]]
    if not labels:
        labels = ["No Finding"]
    if present["Support Devices"]:
        labels.append("Support Devices")
    return to_uint8(img), labels, attributes
