"""Vectorised drawing primitives for the phantom generators.

Geometry is in normalised image coordinates (x, y in [0, 1], y down), so a phantom looks the same
at every resolution. Small round things (nuclei, dots, vessel samples) are drawn by splatting
weighted points into a map and blurring it with a Gaussian: one filter call per size class instead
of one stamp per object, which keeps generation at hundreds of images per second on one core.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of pixel centres in [0, 1], float32, shape (size, size), read-only."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


@lru_cache(maxsize=256)
def _gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    radius = max(1, int(truncate * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    k.flags.writeable = False
    return k


def gaussian(
    img: np.ndarray, sigma_y: float, sigma_x: float | None = None, mode: str = "constant"
) -> np.ndarray:
    """Separable Gaussian filter with cached kernels (the kernel build dominates at 64 px)."""
    sigma_x = sigma_y if sigma_x is None else sigma_x
    out = ndimage.correlate1d(img, _gaussian_kernel(round(sigma_y, 3)), axis=0, mode=mode)
    return ndimage.correlate1d(out, _gaussian_kernel(round(sigma_x, 3)), axis=1, mode=mode)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """A smoothstep with the logistic's slope at 0 (1/4), reaching 0 and 1 at x = -/+3.

    Close to the logistic where it matters for soft edges, and a third of its cost.
    """
    t = np.clip(0.5 + x * (1.0 / 6.0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_ellipse(
    size: int, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, edge: float = 0.01
) -> np.ndarray:
    """Ellipse mask in [0, 1] with a soft edge `edge` wide (normalised units)."""
    yy, xx = grid(size)
    dx, dy = xx - cx, yy - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    r = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    return sigmoid((1.0 - r) * min(rx, ry) / max(edge, 1e-4) * 4.0).astype(np.float32)


def ellipse_radius(size: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Normalised elliptical radius (1 on the ellipse boundary)."""
    yy, xx = grid(size)
    return np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)


def splat(size: int, x: np.ndarray, y: np.ndarray, w: np.ndarray | float) -> np.ndarray:
    """Bilinear splat of weighted points (normalised coords) into a (size, size) map."""
    x = np.asarray(x, dtype=np.float32).ravel() * size - 0.5
    y = np.asarray(y, dtype=np.float32).ravel() * size - 0.5
    w = np.broadcast_to(np.asarray(w, dtype=np.float32), x.shape)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    xi = np.concatenate([x0, x0 + 1, x0, x0 + 1])
    yi = np.concatenate([y0, y0, y0 + 1, y0 + 1])
    wt = np.concatenate([w * (1 - fx) * (1 - fy), w * fx * (1 - fy), w * (1 - fx) * fy, w * fx * fy])
    keep = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
    flat = np.bincount(yi[keep] * size + xi[keep], weights=wt[keep], minlength=size * size)
    return flat.reshape(size, size).astype(np.float32)


def blobs(
    size: int,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | float,
    radius: float,
    aspect: float = 1.0,
) -> np.ndarray:
    """Gaussian blobs of a given radius (normalised) with peak ~w; aspect > 1 stretches along x."""
    sigma = max(radius * size / 1.5, 0.35)
    sig_y, sig_x = sigma, sigma * aspect
    return gaussian(splat(size, x, y, w), sig_y, sig_x) * (2.0 * np.pi * sig_x * sig_y)


def strokes(
    size: int, polylines: list[np.ndarray] | np.ndarray, width: float, weight: float | np.ndarray = 1.0
) -> np.ndarray:
    """Soft lines of a given width (normalised) along polylines, peak ~weight (scalar or per polyline).

    All segments of all polylines are sampled at once: each gets the same number of points,
    weighted by its length, so the line density is even along every segment.
    """
    if len(polylines) == 0:
        return np.zeros((size, size), dtype=np.float32)
    lines = [np.asarray(p, np.float32) for p in polylines]
    p0 = np.concatenate([p[:-1] for p in lines])
    p1 = np.concatenate([p[1:] for p in lines])
    seg_weight = np.repeat(
        np.broadcast_to(np.asarray(weight, np.float32), (len(lines),)), [len(p) - 1 for p in lines]
    )
    lengths = np.hypot(*(p1 - p0).T)
    spacing = 0.5 / size
    m = max(1, int(np.ceil(lengths.max() / spacing)))
    t = ((np.arange(m, dtype=np.float32) + 0.5) / m)[None, :, None]
    pts = (p0[:, None, :] + t * (p1 - p0)[:, None, :]).reshape(-1, 2)
    w = np.repeat(seg_weight * lengths / (m * spacing), m)
    sigma = max(width * size / 2.5, 0.4)
    return gaussian(splat(size, pts[:, 0], pts[:, 1], w), sigma) * (
        np.sqrt(2.0 * np.pi) * sigma * spacing * size
    )


@lru_cache(maxsize=64)
def _noise_basis(size: int, sigma: float) -> tuple[np.ndarray, float]:
    """(size, n) Gaussian weights from pixel centres to nodes spaced `sigma` apart, plus a margin."""
    step = sigma
    nodes = np.arange(-2 * step, size + 2 * step, step, dtype=np.float32)
    centres = np.arange(size, dtype=np.float32) + 0.5
    basis = np.exp(-0.5 * ((centres[:, None] - nodes[None, :]) / sigma) ** 2).astype(np.float32)
    basis.flags.writeable = False
    norm = float(
        np.mean(np.sum(basis.astype(np.float64) ** 2, axis=1))
    )  # pixel variance = row norm^2 squared
    return basis, norm


def smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Gaussian random field, zero-mean and unit-variance in expectation, features ~`scale` across.

    Fine features: white noise through a short Gaussian filter. Coarse features: white noise on a
    coarse node grid spread by a separable Gaussian basis (two small matrix products instead of a
    wide convolution). The variance is normalised analytically, not per draw.
    """
    sigma = round(max(scale * size / 2.0, 0.5), 3)
    if sigma < 2.0:
        kernel = _gaussian_kernel(sigma)
        white = rng.standard_normal((size, size), dtype=np.float32)
        return gaussian(white, sigma, mode="wrap") / float(np.sum(kernel.astype(np.float64) ** 2))
    basis, norm = _noise_basis(size, sigma)
    n = basis.shape[1]
    return (basis @ rng.standard_normal((n, n), dtype=np.float32) @ basis.T) / norm


@lru_cache(maxsize=64)
def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) row-normalised Gaussian: G @ img @ G.T blurs with edges renormalised."""
    centres = np.arange(size, dtype=np.float32)
    g = np.exp(-0.5 * ((centres[:, None] - centres[None, :]) / sigma) ** 2)
    g[np.abs(centres[:, None] - centres[None, :]) > 4 * sigma] = 0.0
    g = (g / g.sum(axis=1, keepdims=True)).astype(np.float32)
    g.flags.writeable = False
    return g


def blur(img: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Gaussian blur of a (H, W) or (H, W, C) image by `radius` (normalised)."""
    sigma = radius * size
    if sigma < 0.3:
        return img
    g = _blur_matrix(size, round(sigma, 3))
    if img.ndim == 3:
        return np.ascontiguousarray((g @ img.transpose(2, 0, 1) @ g.T).transpose(1, 2, 0))
    return g @ img @ g.T


def random_walk_curves(
    rng: np.random.Generator,
    starts: np.ndarray,
    headings: np.ndarray,
    steps: int,
    step: float,
    turn: float,
    curl: float | np.ndarray = 0.0,
) -> np.ndarray:
    """N smooth random curves, shape (N, steps + 1, 2): headings drift by `curl` per step plus noise."""
    starts = np.asarray(starts, np.float32).reshape(-1, 2)
    n = len(starts)
    curl = np.broadcast_to(np.asarray(curl, np.float32).reshape(-1, 1), (n, 1))
    heading = np.asarray(headings, np.float32).reshape(n, 1) + np.cumsum(
        curl + rng.normal(0.0, turn, (n, steps)), axis=1
    )
    deltas = step * np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    return np.concatenate(
        [starts[:, None, :], starts[:, None, :] + np.cumsum(deltas, axis=1)], axis=1
    ).astype(np.float32)


def random_walk_curve(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    steps: int,
    step: float,
    turn: float,
    curl: float = 0.0,
) -> np.ndarray:
    """One curve of `random_walk_curves`, shape (steps + 1, 2)."""
    return random_walk_curves(rng, np.array([start]), np.array([angle]), steps, step, turn, curl)[0]


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
