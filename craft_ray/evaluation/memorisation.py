"""Memorisation: the nearest real training image of every generated image, by embedding similarity.

Embeddings are L2-normalised, so similarity is the cosine. `vlm` uses the evaluator's image
embedding; `pixels` a model-free one (the image at 16x16, centred and normalised: the cosine is then
the Pearson correlation of the thumbnails), which flags near-pixel copies only.

What counts as a copy is calibrated on real images the model never saw: held-out real images are no
copies by construction, yet images of one modality resemble each other (chest phantoms' thumbnails
correlate at 0.96 with their nearest training image). The copy threshold is the q-quantile of the
held-out images' similarity to their nearest training image, so a generator that draws new images
of the real distribution is flagged about as often as held-out images are (1 - q), and a copy
(similarity 1) always is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_SIDE = 16


def pixel_embedding(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C*16*16) centred, unit-norm thumbnails."""
    thumbs = F.interpolate(images.float(), size=(PIXEL_SIDE, PIXEL_SIDE), mode="area").flatten(1)
    thumbs = thumbs - thumbs.mean(dim=1, keepdim=True)
    return F.normalize(thumbs, dim=1)


@dataclass
class Neighbours:
    index: np.ndarray  # (N,) row of the nearest real image
    similarity: np.ndarray  # (N,) its cosine similarity


def nearest_neighbours(generated: np.ndarray, real: np.ndarray, chunk: int = 1024) -> Neighbours:
    """For each generated embedding, the most similar real one (both (n, D), L2-normalised)."""
    gen = torch.as_tensor(np.asarray(generated, dtype=np.float32))
    ref = torch.as_tensor(np.asarray(real, dtype=np.float32))
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"embedding sizes differ: {gen.shape[1]} vs {ref.shape[1]}")
    index, sim = [], []
    for start in range(0, len(gen), chunk):
        s = gen[start : start + chunk] @ ref.T
        best = s.max(dim=1)
        index.append(best.indices.numpy())
        sim.append(best.values.numpy())
    return Neighbours(np.concatenate(index), np.concatenate(sim).astype(np.float64))


def copy_share(similarity: np.ndarray, threshold: float) -> tuple[int, int]:
    """(images at or above the copy threshold, images)."""
    return int((np.asarray(similarity) >= threshold).sum()), int(len(similarity))


def calibrated_threshold(heldout_similarity: np.ndarray, q: float) -> float:
    """The copy threshold: the q-quantile of held-out real images' nearest-training similarity."""
    sims = np.asarray(heldout_similarity, dtype=np.float64)
    if len(sims) == 0:
        raise ValueError("no held-out similarities to calibrate the copy threshold on")
    return float(np.quantile(sims, q))


def heldout_flags(heldout_similarity: np.ndarray, q: float) -> np.ndarray:
    """Which held-out images a threshold calibrated on the *other* held-out images flags (leave one
    out): the rate a fresh real image gets, not the in-sample 1 - q that calibration forces."""
    sims = np.asarray(heldout_similarity, dtype=np.float64)
    if len(sims) < 2:
        return np.zeros(len(sims), dtype=bool)
    order = np.argsort(sims, kind="stable")
    ranked = sims[order]
    flags = np.empty(len(sims), dtype=bool)
    for rank, i in enumerate(order):
        rest = np.delete(ranked, rank)
        flags[i] = sims[i] >= np.quantile(rest, q)
    return flags


def threshold_interval(
    heldout_similarity: np.ndarray, q: float, n_boot: int, level: float, seed: int
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the calibrated threshold (the held-out images resampled)."""
    sims = np.asarray(heldout_similarity, dtype=np.float64)
    rng = np.random.default_rng([seed, 17])
    draws = np.quantile(sims[rng.integers(0, len(sims), size=(n_boot, len(sims)))], q, axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))
