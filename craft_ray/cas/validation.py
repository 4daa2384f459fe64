"""Input checks for CAS evaluators: bad input raises a ScoringError naming the problem."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from craft_ray.errors import ScoringError

RANGE_TOLERANCE = 1e-3


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ScoringError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ScoringError(f"images must have shape (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ScoringError("empty batch: no images to score")
    if not images.is_floating_point():
        raise ScoringError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    with torch.no_grad():
        finite = torch.isfinite(images)
        if not finite.all():
            bad = sorted(set((~finite).flatten(1).any(dim=1).nonzero().flatten().tolist()))
            raise ScoringError(f"images contain NaN or Inf pixels (batch index {bad[:10]})")
        lo, hi = float(images.min()), float(images.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ScoringError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")


def check_label_sets(
    label_sets: Sequence[Sequence[str]], batch: int, known: Sequence[str], dataset: str
) -> None:
    if len(label_sets) != batch:
        raise ScoringError(f"{batch} images but {len(label_sets)} label sets")
    known_set = set(known)
    for i, labels in enumerate(label_sets):
        if isinstance(labels, str):
            raise ScoringError(f"label set {i} is a string ({labels!r}); pass a list of labels")
        if not labels:
            raise ScoringError(f"label set {i} is empty; every image needs at least one label")
        unknown = [label for label in labels if label not in known_set]
        if unknown:
            raise ScoringError(
                f"label set {i}: unknown label(s) {unknown} for {dataset} (known: {', '.join(known)})"
            )
