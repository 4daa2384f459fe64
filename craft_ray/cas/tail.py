"""The low-alignment tail: the share of images scoring below their label's real-image threshold."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class TailRow:
    group: str  # a label, or "overall"
    n: int
    below: int
    share: float
    ci_low: float
    ci_high: float
    threshold: float | None  # the label's threshold; None for "overall"


def image_threshold(labels: Sequence[str], thresholds: Mapping[str, float]) -> float:
    """An image is in the tail only if it scores below the thresholds of all its labels, i.e. below
    the lowest of them (for single-label datasets: its label's threshold). NaN if none is known."""
    known = [thresholds[label] for label in labels if label in thresholds]
    return min(known) if known else math.nan


def share_ci(below: int, n: int, n_boot: int, level: float, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of a proportion. Resampling n Bernoulli outcomes with replacement
    gives Binomial(n, p_hat) counts, so the bootstrap is drawn exactly without index arrays."""
    if n == 0:
        return math.nan, math.nan
    shares = rng.binomial(n, below / n, size=n_boot) / n
    alpha = (1 - level) / 2
    return float(np.quantile(shares, alpha)), float(np.quantile(shares, 1 - alpha))


def tail_report(
    scores: Sequence[float],
    label_sets: Sequence[Sequence[str]],
    thresholds: Mapping[str, float],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[TailRow]:
    """Per-label and overall tail shares with bootstrap confidence intervals."""
    scores_arr = np.asarray(scores, dtype=np.float64)
    if len(scores_arr) != len(label_sets):
        raise ValueError(f"{len(scores_arr)} scores but {len(label_sets)} label sets")
    rng = np.random.default_rng(seed)
    rows = []
    for label, tau in thresholds.items():
        members = np.array([label in labels for labels in label_sets], dtype=bool)
        n = int(members.sum())
        below = int((scores_arr[members] < tau).sum())
        rows.append(
            TailRow(
                label, n, below, below / n if n else math.nan, *share_ci(below, n, n_boot, level, rng), tau
            )
        )
    per_image = np.array([image_threshold(labels, thresholds) for labels in label_sets])
    known = ~np.isnan(per_image)
    n = int(known.sum())
    below = int((scores_arr[known] < per_image[known]).sum())
    rows.append(
        TailRow(
            "overall", n, below, below / n if n else math.nan, *share_ci(below, n, n_boot, level, rng), None
        )
    )
    return rows
