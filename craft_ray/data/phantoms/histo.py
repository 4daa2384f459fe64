"""H&E histology patch phantoms of colorectal tissue classes (NCT-CRC-HE style).

Colour comes from a Beer-Lambert stain model: haematoxylin and eosin optical densities with the
Ruifrok-Johnston stain vectors, per-slide stain strength, so patches look H&E-stained and vary
like real slides. Each class is drawn from stored tissue parameters: nuclear density, nuclear
size, atypia (size variation and shape irregularity), fat vacuole fraction, stroma fibre density.

- ADI: large empty fat vacuoles with thin eosinophilic membranes, rare flat nuclei.
- BACK: glass without tissue, faint debris.
- LYM: dense small round dark lymphocyte nuclei.
- MUC: pale, wispy bluish-grey mucus with few cells.
- NORM: crypts with open lumens, a regular basal row of nuclei, goblet cells; lamina propria.
- STR: wavy eosinophilic fibres with sparse spindle nuclei along them.
- TUM: crowded, large, pleomorphic hyperchromatic nuclei round irregular lumens with debris.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.draw import blobs, blur, grid, sigmoid, smooth_noise, to_uint8

CLASSES = ("ADI", "BACK", "LYM", "MUC", "NORM", "STR", "TUM")
H_VEC = np.array([0.65, 0.70, 0.29], np.float32)
E_VEC = np.array([0.07, 0.99, 0.11], np.float32)


def patient(rng: np.random.Generator) -> dict[str, Any]:
    """One slide: its stain strengths."""
    return {"h_scale": rng.uniform(0.8, 1.2), "e_scale": rng.uniform(0.7, 1.2)}


def _nuclei(
    rng: np.random.Generator,
    size: int,
    x: np.ndarray,
    y: np.ndarray,
    radius: np.ndarray,
    irregular: float,
    aspect: float = 1.0,
) -> np.ndarray:
    """Nucleus masks in [0, 1]: blobs binned by radius, lobulated by offset sub-blobs when irregular."""
    out = np.zeros((size, size), np.float32)
    if len(x) == 0:
        return out
    bins = np.quantile(radius, [0.0, 0.34, 0.67, 1.0])
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        pick = (radius >= lo) & (radius <= hi)
        if not pick.any():
            continue
        r = float(radius[pick].mean())
        px, py = x[pick], y[pick]
        if irregular > 0:
            k = 2
            ang = rng.uniform(0, 2 * np.pi, (pick.sum(), k))
            off = r * irregular * rng.uniform(0.3, 0.8, (pick.sum(), k))
            px = np.concatenate([px, (px[:, None] + off * np.cos(ang)).ravel()])
            py = np.concatenate([py, (py[:, None] + off * np.sin(ang)).ravel()])
        out = np.maximum(out, blobs(size, px, py, 1.0, r, aspect))
    return sigmoid((out - 0.45) * 10.0)


def _scatter_nuclei(rng: np.random.Generator, n: int, r_mean: float, r_cv: float) -> tuple[np.ndarray, ...]:
    x, y = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    r = np.clip(rng.normal(r_mean, r_mean * r_cv, n), r_mean * 0.4, r_mean * 2.5)
    return x, y, r


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any]
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    label = str(rng.choice(CLASSES))
    hema = np.zeros((size, size), np.float32)
    eosin = np.zeros((size, size), np.float32)
    attrs: dict[str, Any] = {"fat_fraction": 0.0, "fibre_density": 0.0}
    nuclei = (np.empty(0), np.empty(0), np.empty(0))
    irregular, aspect = 0.0, 1.0

    if label == "ADI":
        n = int(rng.integers(6, 14))
        seeds = rng.uniform(-0.1, 1.1, (n, 2)).astype(np.float32)
        d = np.sort(np.hypot(xx[None] - seeds[:, 0, None, None], yy[None] - seeds[:, 1, None, None]), axis=0)
        membrane = sigmoid((0.012 - (d[1] - d[0])) * size * 1.5)
        eosin = 0.05 + 0.55 * membrane
        on_membrane = rng.choice(np.flatnonzero(membrane.ravel() > 0.5), 4)
        nuclei = (xx.ravel()[on_membrane], yy.ravel()[on_membrane], np.full(4, 0.012))
        aspect = 2.5
        attrs["fat_fraction"] = round(float(1.0 - membrane.mean()), 4)
    elif label == "BACK":
        eosin = 0.03 + 0.02 * np.abs(smooth_noise(rng, size, 0.1))
        hema = 0.02 * np.abs(smooth_noise(rng, size, 0.3))
        specks = blobs(size, rng.uniform(0, 1, 6), rng.uniform(0, 1, 6), 0.4, 0.006)
        hema = hema + specks
    elif label == "LYM":
        eosin = 0.25 + 0.05 * smooth_noise(rng, size, 0.05)
        nuclei = _scatter_nuclei(rng, int(rng.integers(140, 220)), 0.019, 0.12)
    elif label == "MUC":
        wisps = smooth_noise(rng, size, 0.06) + 0.6 * smooth_noise(rng, size, 0.02)
        eosin = 0.12 + 0.08 * sigmoid(wisps * 2)
        hema = 0.18 + 0.12 * sigmoid(wisps * 2 - 1)
        nuclei = _scatter_nuclei(rng, int(rng.integers(2, 8)), 0.02, 0.2)
    elif label == "NORM":
        eosin = 0.45 + 0.08 * smooth_noise(rng, size, 0.04)
        xs, ys, rs = _scatter_nuclei(rng, int(rng.integers(20, 40)), 0.016, 0.2)
        crypt_x, crypt_y, crypt_r = [xs], [ys], [rs]
        for _ in range(int(rng.integers(2, 4))):
            cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.09, 0.14)
            dist = np.hypot(xx - cx, yy - cy)
            lumen = sigmoid((r * 0.45 - dist) * size)
            epithelium = sigmoid((r - dist) * size) - lumen
            eosin = eosin * (1 - lumen - epithelium) + 0.03 * lumen + 0.6 * epithelium
            k = int(2 * np.pi * r / 0.045)
            ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1)
            crypt_x.append(cx + 0.85 * r * np.cos(ang))
            crypt_y.append(cy + 0.85 * r * np.sin(ang))
            crypt_r.append(np.full(k, 0.013))
            goblet = ang[::3] + 0.1
            gob = blobs(size, cx + 0.62 * r * np.cos(goblet), cy + 0.62 * r * np.sin(goblet), 1.0, 0.018)
            eosin = eosin * (1 - np.clip(gob, 0, 0.9))
        nuclei = (np.concatenate(crypt_x), np.concatenate(crypt_y), np.concatenate(crypt_r))
        aspect = 1.3
    elif label == "STR":
        waviness = 0.6 * smooth_noise(rng, size, 0.15)
        freq = rng.uniform(35, 55)
        fibres = 0.5 + 0.5 * np.sin(yy * freq + waviness * 3 + 0.2 * smooth_noise(rng, size, 0.03))
        density = rng.uniform(0.5, 0.9)
        eosin = 0.3 + 0.45 * density * fibres
        nuclei = _scatter_nuclei(rng, int(rng.integers(8, 22)), 0.012, 0.2)
        aspect = 3.5
        attrs["fibre_density"] = round(float(density), 4)
    else:  # TUM
        eosin = 0.5 + 0.1 * smooth_noise(rng, size, 0.05)
        for _ in range(int(rng.integers(1, 3))):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            dist = np.hypot(xx - cx, yy - cy) * (1 + 0.4 * smooth_noise(rng, size, 0.1))
            lumen = sigmoid((rng.uniform(0.04, 0.08) - dist) * size)
            eosin = eosin * (1 - lumen) + 0.05 * lumen
            debris = blobs(size, cx + rng.normal(0, 0.02, 5), cy + rng.normal(0, 0.02, 5), 0.5, 0.006)
            hema = hema + debris * lumen
        nuclei = _scatter_nuclei(rng, int(rng.integers(70, 110)), 0.024, 0.35)
        irregular = 0.8

    x, y, r = nuclei
    nuc = _nuclei(rng, size, np.asarray(x), np.asarray(y), np.asarray(r), irregular, aspect)
    chromatin = 1.0 + 0.25 * smooth_noise(rng, size, 0.01)
    strength = 1.6 if label in ("LYM", "TUM") else 1.2
    hema = hema + strength * nuc * chromatin
    eosin = eosin * (1 - 0.5 * nuc)

    od = (
        pat["h_scale"] * hema[..., None] * H_VEC
        + pat["e_scale"] * eosin[..., None] * E_VEC
        + 0.02 * smooth_noise(rng, size, 0.2)[..., None]
    )
    img = np.exp(-np.clip(od, 0, None) * 1.4) * np.array([0.97, 0.96, 0.98], np.float32)
    img = blur(img, 0.002, size)
    if rng.random() < 0.5:  # orientation carries no meaning in a patch
        img = img.transpose(1, 0, 2)
    img = img[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]

    n_nuclei = len(r)
    attrs.update(
        nuclear_density=n_nuclei,
        nuclear_size=round(float(np.mean(r)) if n_nuclei else 0.0, 5),
        atypia=round(float(np.std(r) / np.mean(r) + irregular) if n_nuclei else 0.0, 4),
    )
    return to_uint8(np.ascontiguousarray(img)), [label], attrs
