"""H&E histology patch phantoms of colorectal tissue classes (NCT-CRC-HE style).

Colour comes from a Beer-Lambert stain model: haematoxylin and eosin optical densities with the
Ruifrok-Johnston stain vectors, per-slide stain strength, so patches look H&E-stained and vary
like real slides. Each class is drawn from stored tissue parameters (nuclear density, size and
atypia, fat vacuoles, fibres, glands), and each checklist criterion of a class from a parameter
of its own, mostly present in that class:

- ADI: large empty fat vacuoles with thin (sometimes thick) membranes, rare (sometimes more) flat
  nuclei, sometimes a fibrous septum across the fat.
- BACK: glass without tissue, faint debris; sometimes stray nuclei, a pink tint or a tissue fragment.
- LYM: dense (sometimes less dense) small round dark nuclei, uniform (sometimes mixed) in size.
- MUC: pale, wispy (sometimes homogeneous) bluish-grey mucus with few (sometimes more) cells.
- NORM: crypts with open (sometimes collapsed) lumens, a regular (sometimes disordered) basal row of
  nuclei, goblet cells (mostly); lamina propria where the crypts do not touch.
- STR: wavy eosinophilic fibres, aligned (sometimes disordered), sparse (sometimes many) spindle nuclei.
- TUM: crowded, large, pleomorphic hyperchromatic nuclei (sometimes fewer or low-grade), irregular
  lumens (sometimes solid) with dirty necrosis (mostly).

`attributes["items"]` holds the ground truth of every checklist item these parameters decide
(`histopath:<class>:<n>`, `histo:anatomy|realism:<n>`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from craft_ray.data.phantoms.defects import Defect, patch_mask, record, rib_texture
from craft_ray.data.phantoms.draw import blobs, blur, grid, sigmoid, smooth_noise, to_uint8

CLASSES = ("ADI", "BACK", "LYM", "MUC", "NORM", "STR", "TUM")
H_VEC = np.array([0.65, 0.70, 0.29], np.float32)
E_VEC = np.array([0.07, 0.99, 0.11], np.float32)
SCANT_CYTOPLASM = 0.15  # nuclear coverage (n * pi * mean r^2) above which cytoplasm is scant
# Hallucination-like defects and the anatomy/realism items each violates.
DEFECTS: dict[str, tuple[str, ...]] = {
    "duplicated": ("histo:anatomy:2",),  # a square repeated elsewhere, restained: tiled, abrupt seams
    "colour": ("histo:realism:0",),  # stain colours that are not H&E
    "half": ("histo:anatomy:2",),  # the section ends at a straight seam, flat pink beyond it
    "texture": ("histo:anatomy:0", "histo:realism:0"),  # a grey radiograph-like square: not tissue
}


def _two_squares_apart(rng: np.random.Generator, size: int) -> tuple[tuple[int, int], tuple[int, int], int]:
    """Corners (y, x) of a source and a destination square of side 30-42 % of the patch that do
    not overlap, anywhere in the patch: apart along one axis, at any place along the other."""
    side = int(rng.integers(int(0.3 * size), int(0.42 * size) + 1))
    apart_in_x = bool(rng.integers(2))
    first = int(rng.integers(0, size - 2 * side + 1))
    second = int(rng.integers(first + side, size - side + 1))
    along = [first, second] if rng.random() < 0.5 else [second, first]
    across = rng.integers(0, size - side + 1, 2)
    corners = [(int(c), a) if apart_in_x else (a, int(c)) for a, c in zip(along, across, strict=True)]
    return corners[0], corners[1], side


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


def _crypts_apart(crypts: list[tuple[float, float, float]]) -> bool:
    """Lamina propria between every pair of crypts: none touches another."""
    return all(
        np.hypot(a[0] - b[0], a[1] - b[1]) > a[2] + b[2] + 0.02
        for i, a in enumerate(crypts)
        for b in crypts[i + 1 :]
    )


def image(
    rng: np.random.Generator, size: int, pat: dict[str, Any], defect: Defect | None = None
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    yy, xx = grid(size)
    label = str(rng.choice(CLASSES))
    kind = defect.kind if defect else None
    if kind == "duplicated" and label == "BACK":  # a repeated square of empty glass shows nothing
        defect = Defect("half", defect.rng)
        kind = "half"
    hema = np.zeros((size, size), np.float32)
    eosin = np.zeros((size, size), np.float32)
    attrs: dict[str, Any] = {"fat_fraction": 0.0, "fibre_density": 0.0}
    nuclei = (np.empty(0), np.empty(0), np.empty(0))
    irregular, aspect = 0.0, 1.0
    met: dict[str, bool] = {}  # criteria of the image's own class
    glands = False

    if label == "ADI":
        n = int(rng.integers(6, 14))
        met["thin"], met["rare"], septum = (bool(rng.random() < p) for p in (0.8, 0.8, 0.25))
        seeds = rng.uniform(-0.1, 1.1, (n, 2)).astype(np.float32)
        d = np.sort(np.hypot(xx[None] - seeds[:, 0, None, None], yy[None] - seeds[:, 1, None, None]), axis=0)
        membrane = sigmoid(((0.012 if met["thin"] else 0.03) - (d[1] - d[0])) * size * 1.5)
        if septum:  # a band of fibrous tissue across the fat
            angle, offset = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7)
            dist = np.abs((xx - 0.5) * np.sin(angle) - (yy - 0.5) * np.cos(angle) + offset - 0.5)
            membrane = np.maximum(membrane, sigmoid((0.06 - dist) * size))
        eosin = 0.05 + 0.55 * membrane
        k = 4 if met["rare"] else 14
        on_membrane = rng.choice(np.flatnonzero(membrane.ravel() > 0.5), k)
        nuclei = (xx.ravel()[on_membrane], yy.ravel()[on_membrane], np.full(k, 0.012))
        aspect = 2.5
        met["white"] = met["thin"] and not septum
        attrs["fat_fraction"] = round(float(1.0 - membrane.mean()), 4)
    elif label == "BACK":
        stray, tinted, fragment = (bool(rng.random() < 0.2) for _ in range(3))
        eosin = (0.12 if tinted else 0.03) + 0.02 * np.abs(smooth_noise(rng, size, 0.1))
        hema = 0.02 * np.abs(smooth_noise(rng, size, 0.3))
        specks = blobs(size, rng.uniform(0, 1, 6), rng.uniform(0, 1, 6), 0.4, 0.006)
        hema = hema + specks
        if fragment:  # a torn edge of stained tissue in a corner
            corner = sigmoid((rng.uniform(0.15, 0.25) - np.hypot(xx - 1.0, yy - 1.0) * 0.7) * size)
            eosin = eosin + 0.45 * corner
        if stray:
            nuclei = _scatter_nuclei(rng, int(rng.integers(3, 7)), 0.016, 0.2)
        met.update(no_nuclei=not stray, white=not tinted, specks=not fragment and not stray)
    elif label == "LYM":
        met["dense"], met["uniform"] = (bool(rng.random() < p) for p in (0.85, 0.8))
        eosin = 0.25 + 0.05 * smooth_noise(rng, size, 0.05)
        count = int(rng.integers(140, 220)) if met["dense"] else int(rng.integers(80, 120))
        nuclei = _scatter_nuclei(rng, count, 0.019, 0.12 if met["uniform"] else 0.4)
    elif label == "MUC":
        met["wispy"], met["sparse"], met["pale"] = (bool(rng.random() < p) for p in (0.75, 0.8, 0.8))
        wisps = smooth_noise(rng, size, 0.06) + 0.6 * smooth_noise(rng, size, 0.02)
        if not met["wispy"]:  # homogeneous, glassy mucus
            wisps = 0.15 * wisps
        strength = 1.0 if met["pale"] else 1.8
        eosin = strength * (0.12 + 0.08 * sigmoid(wisps * 2))
        hema = strength * (0.18 + 0.12 * sigmoid(wisps * 2 - 1))
        count = int(rng.integers(2, 8)) if met["sparse"] else int(rng.integers(15, 30))
        nuclei = _scatter_nuclei(rng, count, 0.02, 0.2)
    elif label == "NORM":
        met["open"], met["regular"], met["goblets"] = (bool(rng.random() < p) for p in (0.85, 0.8, 0.8))
        eosin = 0.45 + 0.08 * smooth_noise(rng, size, 0.04)
        xs, ys, rs = _scatter_nuclei(rng, int(rng.integers(20, 40)), 0.016, 0.2)
        crypt_x, crypt_y, crypt_r, crypts = [xs], [ys], [rs], []
        for _ in range(int(rng.integers(2, 4))):
            cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.09, 0.14)
            crypts.append((cx, cy, r))
            dist = np.hypot(xx - cx, yy - cy)
            lumen = sigmoid((r * (0.45 if met["open"] else 0.12) - dist) * size)
            epithelium = sigmoid((r - dist) * size) - lumen
            eosin = eosin * (1 - lumen - epithelium) + 0.03 * lumen + 0.6 * epithelium
            k = int(2 * np.pi * r / 0.045)
            ang = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 1)
            ring = 0.85 * r * (1.0 if met["regular"] else rng.uniform(0.45, 1.15, k))
            crypt_x.append(cx + ring * np.cos(ang))
            crypt_y.append(cy + ring * np.sin(ang))
            crypt_r.append(np.full(k, 0.013))
            if met["goblets"]:
                goblet = ang[::3] + 0.1
                gob = blobs(size, cx + 0.62 * r * np.cos(goblet), cy + 0.62 * r * np.sin(goblet), 1.0, 0.018)
                eosin = eosin * (1 - np.clip(gob, 0, 0.9))
        nuclei = (np.concatenate(crypt_x), np.concatenate(crypt_y), np.concatenate(crypt_r))
        aspect = 1.3
        glands = True
        met["apart"] = _crypts_apart(crypts)
    elif label == "STR":
        met["aligned"], met["sparse"] = (bool(rng.random() < p) for p in (0.75, 0.8))
        waviness = (0.6 if met["aligned"] else 2.5) * smooth_noise(rng, size, 0.15)
        freq = rng.uniform(35, 55)
        fibres = 0.5 + 0.5 * np.sin(yy * freq + waviness * 3 + 0.2 * smooth_noise(rng, size, 0.03))
        density = rng.uniform(0.5, 0.9)
        eosin = 0.3 + 0.45 * density * fibres
        count = int(rng.integers(8, 22)) if met["sparse"] else int(rng.integers(30, 46))
        nuclei = _scatter_nuclei(rng, count, 0.012, 0.2)
        aspect = 3.5
        attrs["fibre_density"] = round(float(density), 4)
    else:  # TUM
        met["crowded"], met["pleomorphic"], glands = (bool(rng.random() < p) for p in (0.85, 0.8, 0.8))
        met["necrosis"] = glands and bool(rng.random() < 0.7)
        eosin = 0.5 + 0.1 * smooth_noise(rng, size, 0.05)
        for _ in range(int(rng.integers(1, 3)) if glands else 0):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            dist = np.hypot(xx - cx, yy - cy) * (1 + 0.4 * smooth_noise(rng, size, 0.1))
            lumen = sigmoid((rng.uniform(0.04, 0.08) - dist) * size)
            eosin = eosin * (1 - lumen) + 0.05 * lumen
            if met["necrosis"]:
                debris = blobs(size, cx + rng.normal(0, 0.02, 5), cy + rng.normal(0, 0.02, 5), 0.5, 0.006)
                hema = hema + debris * lumen
        count = int(rng.integers(70, 110)) if met["crowded"] else int(rng.integers(40, 60))
        nuclei = _scatter_nuclei(rng, count, 0.024, 0.35 if met["pleomorphic"] else 0.15)
        irregular = 0.8 if met["pleomorphic"] else 0.25

    x, y, r = nuclei
    nuc = _nuclei(rng, size, np.asarray(x), np.asarray(y), np.asarray(r), irregular, aspect)
    chromatin = 1.0 + 0.25 * smooth_noise(rng, size, 0.01)
    strength = 1.6 if label in ("LYM", "TUM") else 1.2
    hema = hema + strength * nuc * chromatin
    eosin = eosin * (1 - 0.5 * nuc)
    if kind == "half":  # the section ends at a straight seam; flat pink beyond
        phi = defect.rng.uniform(0, 2 * np.pi)
        cut = ((xx - 0.5) * np.cos(phi) + (yy - 0.5) * np.sin(phi)) > 0
        hema, eosin = np.where(cut, 0.02, hema), np.where(cut, 0.35, eosin)

    h_vec, e_vec = H_VEC, E_VEC
    if kind == "colour":  # stains that are not haematoxylin and eosin
        h_vec, e_vec = np.float32([[0.1, 0.2, 0.9], [0.9, 0.1, 0.8], [0.8, 0.8, 0.1]])[
            defect.rng.permutation(3)[:2]
        ]
    od = (
        pat["h_scale"] * hema[..., None] * h_vec
        + pat["e_scale"] * eosin[..., None] * e_vec
        + 0.02 * smooth_noise(rng, size, 0.2)[..., None]
    )
    if kind == "duplicated":  # a square of the section repeated over another part of it, as a tile
        # from another scan: other stain strength and exposure, so its seams are abrupt (a plain
        # copy of the texture left no seam to see: edge gradients as in the tissue around it)
        (sy, sx), (dy, dx), side = _two_squares_apart(defect.rng, size)
        stain = defect.rng.uniform(0.6, 0.8) if defect.rng.random() < 0.5 else defect.rng.uniform(1.25, 1.5)
        exposure = defect.rng.uniform(0.08, 0.15)  # optical density added over the whole tile, glass too
        od[dy : dy + side, dx : dx + side] = stain * od[sy : sy + side, sx : sx + side] + exposure
    img = np.exp(-np.clip(od, 0, None) * 1.4) * np.array([0.97, 0.96, 0.98], np.float32)
    if kind == "colour":  # and a cast on the glass, which the stains barely touch
        img = (
            img
            * np.float32([[0.55, 1.0, 0.5], [0.5, 0.7, 1.0], [1.0, 0.5, 0.3]])[int(defect.rng.integers(3))]
        )
    if kind == "texture":  # another modality's texture: a grey radiograph-like square
        square = patch_mask(defect.rng, size, 0.4, 0.55)[..., None]
        img = img * (1 - square) + rib_texture(defect.rng, size)[..., None] * square
    img = blur(img, 0.002, size)
    if rng.random() < 0.5:  # orientation carries no meaning in a patch
        img = img.transpose(1, 0, 2)
    img = img[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]

    n_nuclei = len(r)
    coverage = float(n_nuclei * np.pi * np.mean(np.square(r))) if n_nuclei else 0.0
    attrs.update(
        nuclear_density=n_nuclei,
        nuclear_size=round(float(np.mean(r)) if n_nuclei else 0.0, 5),
        atypia=round(float(np.std(r) / np.mean(r) + irregular) if n_nuclei else 0.0, 4),
        nuclear_coverage=round(coverage, 4),
        glands=glands,
        criteria=dict(sorted(met.items())),
    )
    record(attrs, "histo", _items(label, met, glands, coverage, n_nuclei), DEFECTS, defect)
    return to_uint8(np.ascontiguousarray(img)), [label], attrs


def _items(label: str, met: dict[str, bool], glands: bool, coverage: float, n_nuclei: int) -> dict[str, bool]:
    """A class's criteria hold on images of that class where its parameter says so; the criteria
    that are general statements (glands absent, scant cytoplasm) hold wherever they are true."""

    def of(cls: str, key: str | None = None) -> bool:
        return label == cls and (key is None or met[key])

    return {
        "histopath:ADI:0": of("ADI"),
        "histopath:ADI:1": of("ADI", "thin"),
        "histopath:ADI:2": of("ADI", "rare"),
        "histopath:ADI:3": of("ADI", "white"),
        "histopath:BACK:0": of("BACK"),
        "histopath:BACK:1": n_nuclei == 0,
        "histopath:BACK:2": of("BACK", "white"),
        "histopath:BACK:3": of("BACK", "specks"),
        "histopath:LYM:0": of("LYM", "dense"),
        "histopath:LYM:1": of("LYM", "uniform"),
        "histopath:LYM:2": coverage >= SCANT_CYTOPLASM,
        "histopath:LYM:3": not glands,
        "histopath:MUC:0": of("MUC"),
        "histopath:MUC:1": of("MUC", "wispy"),
        "histopath:MUC:2": of("MUC", "sparse"),
        "histopath:MUC:3": of("MUC", "pale"),
        "histopath:NORM:0": of("NORM", "open"),
        "histopath:NORM:1": of("NORM", "regular"),
        "histopath:NORM:2": of("NORM", "goblets"),
        "histopath:NORM:3": of("NORM", "apart"),
        "histopath:STR:0": of("STR"),
        "histopath:STR:1": of("STR", "sparse"),
        "histopath:STR:2": of("STR", "aligned"),
        "histopath:STR:3": not glands,
        "histopath:TUM:0": of("TUM", "crowded"),
        "histopath:TUM:1": of("TUM", "pleomorphic"),
        "histopath:TUM:2": label == "TUM" and glands,
        "histopath:TUM:3": of("TUM", "necrosis"),
        "histopath:TUM:4": label == "TUM" and coverage >= SCANT_CYTOPLASM,
    }
