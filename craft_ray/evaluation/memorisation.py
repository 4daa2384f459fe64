"""Memorisation: the nearest real training image of every generated image, by embedding similarity.

Embeddings are L2-normalised, so similarity is the cosine. `vlm` uses the evaluator's image
embedding; `pixels` a model-free one (the image at 16x16, centred and normalised: the cosine is then
the Pearson correlation of the thumbnails), which flags near-pixel copies only.
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
