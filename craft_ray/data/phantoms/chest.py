"""Frontal chest radiograph phantoms (greyscale; bright = dense, dark = air).

Anatomy: torso, two lungs with vascular markings fading to the periphery, domed hemidiaphragms
with sharp costophrenic angles, heart and mediastinum, trachea, spine, posterior and anterior
ribs, clavicles. Findings, each drawn from stored parameters, one per checklist criterion:

- Cardiomegaly: cardiothoracic ratio `ctr` > 0.5 (normal 0.38-0.47) defines the label; the heart's
  lateral shift (its left border near the left chest wall or not) and a globular silhouette vary
  on their own, both more often with a large heart.
- Pleural Effusion: the fluid's height (a small effusion fills only the costophrenic recess, a large
  one covers the base), a meniscus rising laterally or a flat level, dense fluid that obscures the
  hemidiaphragm or a thinner layer that leaves its outline visible.
- Pneumothorax: an apical and lateral lucency without lung markings, its extent (a large one: a
  partly collapsed lung), with or without a visible visceral pleural line.
- Lung Opacity: focal opacities inside the lung fields, hazy or well-defined, dense (hiding the
  vessels) or faint (vessels seen through).
- Support Devices: endotracheal tube, central venous catheter, ECG electrodes.

`attributes["items"]` holds the ground truth of every checklist item these parameters decide
(`chexpert:<label>:<n>`, `chest:anatomy|realism:<n>`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.defects import Defect, nuclei_texture, patch_mask, record, tint
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


# Hallucination-like defects and the anatomy/realism items each violates.
DEFECTS: dict[str, tuple[str, ...]] = {
    "duplicated": ("chest:anatomy:0",),  # a third lung field, below the diaphragm
    "missing": ("chest:anatomy:4",),  # the clavicles missing
    "laterality": ("chest:anatomy:2",),  # the heart projecting to the patient's right
    "colour": ("chest:realism:0",),  # a colour cast on a radiograph
    "half": ("chest:anatomy:3",),  # the ribs drawn on one side only (and heavier there)
    "texture": ("chest:realism:3",),  # a patch of histology-like nuclei on the chest
}
LEFT_BORDER_GAP = 0.07  # heart's left border within this of the left chest wall: it "extends toward" it
BLUNTING_HEIGHT = 0.03  # fluid this high at the lateral lung edge fills the costophrenic angle
BASAL_MARGIN = 0.02  # fluid this far above the dome's top covers the base: a basal opacity
MENISCUS_RISE = 0.05  # lateral rise coefficient from which the surface reads as a meniscus
COLLAPSE_EXTENT = 0.27  # pneumothorax rim (share of the lung radius) from which the lung is collapsed


def _effusion_params(rng: np.random.Generator, pat: dict[str, Any], ry: float) -> dict[str, Any]:
    """Volume (a small effusion fills only the recess), meniscus and density, drawn independently."""
    side = str(rng.choice(["right", "left", "both"], p=[0.4, 0.4, 0.2]))
    small = bool(rng.random() < 0.12)
    height = rng.uniform(0.02, pat["dome_h"] - 0.005) if small else 2 * ry * rng.uniform(0.15, 0.35)
    meniscus = rng.uniform(0.06, 0.11) if rng.random() < 0.75 else rng.uniform(0.0, 0.01)
    if small:  # fluid in the recess climbs the lateral wall: a small effusion shows as a meniscus
        meniscus = rng.uniform(0.08, 0.12)
    return {
        "side": side,
        "height": float(height),
        "meniscus": float(meniscus),
        "dense": bool(rng.random() < 0.85),
    }


def _effusion_items(eff: dict[str, Any] | None, dome_h: float) -> dict[str, bool]:
    if eff is None:
        return dict.fromkeys(("basal", "blunted", "meniscus", "obscured"), False)
    basal = eff["height"] >= dome_h + BASAL_MARGIN
    return {
        "basal": basal,
        "blunted": eff["height"] + 1.44 * eff["meniscus"] >= BLUNTING_HEIGHT,
        "meniscus": eff["meniscus"] >= MENISCUS_RISE,
        "obscured": basal and eff["dense"],
    }


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any], defect: Defect | None = None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    present = {name: bool(rng.random() < p) for name, p in FINDING_PROBS.items()}
    jx, jy = rng.normal(0, 0.006, 2).tolist()  # Python floats keep the float32 maps float32
    cx0, cy0 = 0.5 + jx, jy
    kind = defect.kind if defect else None

    # a superellipse: square shoulders and flanks, as a torso filling the detector
    r4 = np.square(np.square((xx - cx0) / pat["body_w"])) + np.square(np.square((yy - 0.6 - cy0) / 0.62))
    torso = sigmoid((1.0 - r4) * size * 0.15)
    torso = np.maximum(torso, soft_ellipse(size, cx0, 0.02, 0.11, 0.12, edge=0.02))
    img = 0.04 + 0.44 * torso + 0.03 * torso * smooth_noise(rng, size, 0.15)

    rx, ry, cy = pat["lung_rx"], pat["lung_ry"], pat["lung_cy"] + cy0
    sides = {"right": cx0 - pat["lung_dx"], "left": cx0 + pat["lung_dx"]}  # patient's right = image left
    lungs, lung_radius, base = {}, {}, {}
    for side, lcx in sides.items():
        lift = 0.02 if side == "right" else 0.0  # liver raises the right hemidiaphragm
        rxs = rx if side == "right" else rx * 0.95
        lungs[side] = _lung(size, lcx, cy - lift * 0.5, rxs, ry, pat["dome_h"])
        lung_radius[side] = ellipse_radius(size, lcx, cy, rxs, ry)
        base[side] = cy - lift * 0.5 + 0.78 * ry  # costophrenic level

    attributes: dict[str, Any] = {}
    eff = _effusion_params(rng, pat, ry) if present["Pleural Effusion"] else None
    eff_sides = () if eff is None else ("right", "left") if eff["side"] == "both" else (eff["side"],)
    ptx_region = np.zeros((size, size), np.float32)
    pleural_line = np.zeros((size, size), np.float32)
    ptx: dict[str, Any] = {}
    if present["Pneumothorax"]:
        side = str(rng.choice(["right", "left"]))
        extent = float(rng.uniform(0.18, 0.36))
        line = bool(rng.random() < 0.7)
        band = sigmoid((cy + 0.08 - yy) * size * 0.5)  # air rises: apical and lateral
        r = lung_radius[side]
        ptx_region = lungs[side] * sigmoid((r - (1.0 - extent)) * size * 0.6) * band
        if line:  # about 3 px wide at any size, so it shows at 64 px
            width = max(1.5 / size, 0.008) / rx
            pleural_line = lungs[side] * np.exp(-(((r - (1.0 - extent)) / width) ** 2)) * band
        ptx = {"side": side, "extent": extent, "line": line}
        attributes.update(
            pneumothorax_side=side, pneumothorax_extent=round(extent, 4), pleural_line_visible=line
        )

    lung = lungs["right"] + lungs["left"]
    markings = _markings(
        rng, size, [(sides["right"] + 0.06, cy + 0.03, -1), (sides["left"] - 0.06, cy + 0.03, 1)]
    )
    lung_value = 0.12 + markings + 0.015 * smooth_noise(rng, size, 0.03)
    lung_value = lung_value * (1 - ptx_region) + 0.05 * ptx_region + 0.18 * pleural_line
    img = img * (1 - lung) + lung_value * lung
    if kind == "duplicated":
        ex, ey = cx0 + defect.rng.uniform(-0.15, 0.15), 0.87 + cy0
        extra = _lung(size, ex, ey, rx * 0.8, ry * 0.4, pat["dome_h"] * 0.5)
        img = img * (1 - extra) + (0.12 + 0.5 * markings[::-1, ::-1]) * extra

    opacity: dict[str, bool] = {}
    if present["Lung Opacity"]:
        count = int(rng.integers(1, 4))
        side_x = rng.choice(list(sides.values()), count)
        ox = side_x + rng.uniform(-0.5, 0.5, count) * rx
        oy = cy + rng.uniform(-0.55, 0.45, count) * ry
        radii = rng.uniform(0.035, 0.065, count)
        opacity = {"hazy": bool(rng.random() < 0.65), "dense": bool(rng.random() < 0.7)}
        if opacity["hazy"]:  # Gaussian fall-off: ill-defined margins
            shape = sum(blobs(size, ox[i : i + 1], oy[i : i + 1], 1.0, 1.2 * radii[i]) for i in range(count))
        else:  # a sharp edge: a well-circumscribed density
            shape = sum(
                soft_ellipse(size, ox[i], oy[i], radii[i], radii[i], edge=0.007) for i in range(count)
            )
        shape = np.minimum(shape, 1.0) * lung * (1 - ptx_region)
        if opacity["dense"]:  # replaces the lung's texture: the vessels disappear behind it
            img = img * (1 - shape) + 0.40 * shape
        else:  # ground glass: vessels still seen through
            img = img + 0.18 * shape
        attributes.update(
            opacity_count=count,
            opacity_radius_mean=round(float(radii.mean()), 4),
            opacity_hazy=opacity["hazy"],
            opacity_dense=opacity["dense"],
        )

    if eff is not None:
        for side in eff_sides:
            lcx = sides[side]
            lateral = np.clip((xx - lcx) / rx * (-1 if side == "right" else 1), -1, 1.5)
            surface = base[side] - eff["height"] - eff["meniscus"] * np.clip(lateral + 0.2, 0, None) ** 2
            fluid = lungs[side] * sigmoid((yy - surface) * size * 0.9)
            value = 0.46 if eff["dense"] else 0.30  # thinner fluid leaves the dome's outline visible
            img = img * (1 - fluid) + (value + 0.01 * smooth_noise(rng, size, 0.1)) * fluid
        attributes.update(
            effusion_side=eff["side"],
            effusion_fraction=round(eff["height"] / (2 * ry), 4),
            effusion_height=round(eff["height"], 4),
            effusion_meniscus=round(eff["meniscus"], 4),
            effusion_dense=eff["dense"],
        )

    ctr = (
        float(rng.uniform(0.54, 0.66))
        if present["Cardiomegaly"]
        else float(pat["ctr_normal"] + rng.normal(0, 0.01))
    )
    shift = float(np.clip(rng.normal(0.0, 0.1), -0.2, 0.25))  # lateral position, in heart radii
    globular = bool(rng.random() < (0.5 if present["Cardiomegaly"] else 0.1))
    thorax_w = 2 * (pat["lung_dx"] + rx)
    heart_rx = ctr * thorax_w / 2
    heart_ry = (0.09 + 0.3 * heart_rx) * (1.25 if globular else 1.0)
    angle = -0.12 if globular else -0.3
    heart_cx, heart_cy = cx0 + (0.3 + shift) * heart_rx, cy + 0.78 * ry - 0.6 * heart_ry
    half_width = float(np.hypot(heart_rx * np.cos(angle), heart_ry * np.sin(angle)))
    left_gap = sides["left"] + 0.95 * rx - (heart_cx + half_width)
    if kind == "laterality":  # the heart projecting to the patient's right
        heart_cx, angle = 2 * cx0 - heart_cx, -angle
    heart = soft_ellipse(size, heart_cx, heart_cy, heart_rx, heart_ry, angle=angle, edge=0.01)
    mediastinum = soft_ellipse(size, cx0, 0.3 + cy0, 0.06, 0.26, edge=0.01)
    dense = np.maximum(heart, mediastinum)
    img = img * (1 - dense) + 0.5 * dense
    attributes.update(
        ctr=round(ctr, 4),
        heart_shift=round(shift, 4),
        heart_globular=globular,
        heart_left_gap=round(float(left_gap), 4),
    )

    trachea = soft_ellipse(size, cx0, 0.2 + cy0, 0.016, 0.15, edge=0.006)
    img = img - 0.16 * trachea
    spine = sigmoid((0.034 - np.abs(xx - cx0)) * size * 2.0) * torso
    vertebrae = 0.5 + 0.5 * np.cos((yy - cy0) * 2 * np.pi / 0.055)
    img = img + spine * (0.04 + 0.04 * vertebrae)
    lateral = pat["lung_dx"] + rx + 0.03
    ribs = _ribs(size, cx0, pat["rib_phase"] + cy0, lateral, cy + 0.8 * ry) * torso
    if kind == "half":  # the ribs of one side only, drawn heavier: the cage is lopsided
        ribs = 2.0 * ribs * sigmoid((xx - cx0) * (1 if defect.rng.random() < 0.5 else -1) * size * 2.0)
    img = img + 0.075 * ribs
    clavicles = [
        np.array([[cx0 - 0.04, 0.19], [cx0 - 0.17, 0.15], [cx0 - 0.3, 0.13]]),
        np.array([[cx0 + 0.04, 0.19], [cx0 + 0.17, 0.15], [cx0 + 0.3, 0.13]]),
    ]
    if kind != "missing":
        img = img + strokes(size, clavicles, width=0.024, weight=0.13)

    devices: list[str] = []
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

    if kind == "texture":  # another modality's texture: dark nuclei in a hard-edged square
        img = img - 0.35 * nuclei_texture(defect.rng, size, 220) * patch_mask(defect.rng, size)
    img = img + 0.01 * rng.standard_normal((size, size), dtype=np.float32)  # quantum mottle
    img = blur(img, 0.003, size)
    img = np.clip(img, 0, 1) ** pat["gamma"]
    if kind == "colour":
        img = tint(img, defect.rng)
    labels = [name for name in PATHOLOGIES if present[name]]
    if not labels:
        labels = ["No Finding"]
    if present["Support Devices"]:
        labels.append("Support Devices")
    fx = _effusion_items(eff, pat["dome_h"])
    clear = not present["Lung Opacity"] and not fx["basal"]
    big = present["Cardiomegaly"]
    items = {
        "chexpert:No Finding:0": clear,
        "chexpert:No Finding:1": not fx["blunted"],
        "chexpert:No Finding:2": not big,
        "chexpert:No Finding:3": not present["Pneumothorax"],
        "chexpert:Cardiomegaly:0": big,
        "chexpert:Cardiomegaly:1": left_gap < LEFT_BORDER_GAP and kind != "laterality",
        "chexpert:Cardiomegaly:2": globular,
        "chexpert:Cardiomegaly:3": big and clear,
        "chexpert:Lung Opacity:0": present["Lung Opacity"],
        "chexpert:Lung Opacity:1": present["Lung Opacity"],  # always drawn inside a lung field
        "chexpert:Lung Opacity:2": opacity.get("hazy", False),
        "chexpert:Lung Opacity:3": opacity.get("dense", False),
        "chexpert:Pneumothorax:0": ptx.get("line", False),
        "chexpert:Pneumothorax:1": present["Pneumothorax"],
        "chexpert:Pneumothorax:2": present["Pneumothorax"],  # always apical and lateral
        "chexpert:Pneumothorax:3": ptx.get("extent", 0.0) >= COLLAPSE_EXTENT,
        "chexpert:Pleural Effusion:0": fx["basal"],
        "chexpert:Pleural Effusion:1": fx["blunted"],
        "chexpert:Pleural Effusion:2": fx["meniscus"],
        "chexpert:Pleural Effusion:3": fx["obscured"],
        "chexpert:Pleural Effusion:4": fx["basal"],  # fluid covering the base layers dependently
        "chexpert:Support Devices:0": "ett" in devices,
        "chexpert:Support Devices:1": "cvc" in devices,
        "chexpert:Support Devices:2": "ecg" in devices,
        "chexpert:Support Devices:3": "ett" in devices or "cvc" in devices,
    }
    record(attributes, "chest", items, DEFECTS, defect)
    return to_uint8(img), labels, attributes
