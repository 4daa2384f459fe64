"""The low-alignment tail: the share of images scoring below their label's real-image threshold.

Each share comes with an exact (Clopper-Pearson) binomial confidence interval, which stays honest
for small groups and for shares of 0 or 1, where a bootstrap of the share collapses to a point.
Every row says how many images it rests on; images that cannot be placed are counted, not dropped:
a NaN score (`nan_scores`) or no threshold for any of their labels (`no_threshold`). The bootstrap
remains the tool for the difference of two runs' shares (`share_difference_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

CI_METHOD = "Clopper-Pearson (exact binomial)"


@dataclass
class TailRow:
    group: str  # a label, or "overall"
    n: int  # images with a finite score and a threshold: what the share rests on
    below: int
    share: float | None  # None when n == 0
    ci_low: float | None
    ci_high: float | None
    threshold: float | None  # the label's threshold; None for "overall" and for labels without one
    nan_scores: int = 0  # images of the group whose score is NaN (not in n)
    no_threshold: int = 0  # images of the group with no threshold for any of their labels (not in n)

    def as_json(self) -> dict:
        """Plain values; NaN never reaches JSON (it is not valid JSON): undefined values are None."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()
        }


def image_threshold(labels: Sequence[str], thresholds: Mapping[str, float]) -> float | None:
    """An image is in the tail only if it scores below the thresholds of all its labels, i.e. below
    the lowest of them (for single-label datasets: its label's threshold). None if none is known."""
    known = [thresholds[label] for label in labels if label in thresholds]
    return min(known) if known else None


def share_ci(below: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Exact (Clopper-Pearson) confidence interval of a binomial proportion; (None, None) if n == 0."""
    if n == 0:
        return None, None
    interval = binomtest(below, n).proportion_ci(confidence_level=level, method="exact")
    return float(interval.low), float(interval.high)


def share_difference_ci(
    below_a: int, n_a: int, below_b: int, n_b: int, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of share_a - share_b between two independent runs. Resampling n
    Bernoulli outcomes gives Binomial(n, p_hat) counts, so each run is redrawn exactly that way."""
    if n_a == 0 or n_b == 0:
        raise ValueError("both runs need at least one image")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot}")
    rng = np.random.default_rng(seed)
    diffs = rng.binomial(n_a, below_a / n_a, n_boot) / n_a - rng.binomial(n_b, below_b / n_b, n_boot) / n_b
    alpha = (1 - level) / 2
    return float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))


def _row(group: str, scores: np.ndarray, taus: np.ndarray, threshold: float | None, level: float) -> TailRow:
    """scores and per-image thresholds (NaN = none) of one group's images."""
    finite = ~np.isnan(scores)
    placed = finite & ~np.isnan(taus)
    n = int(placed.sum())
    below = int((scores[placed] < taus[placed]).sum())
    return TailRow(
        group,
        n,
        below,
        below / n if n else None,
        *share_ci(below, n, level),
        threshold,
        nan_scores=int((~finite).sum()),
        no_threshold=int((finite & np.isnan(taus)).sum()),
    )


def tail_report(
    scores: Sequence[float],
    label_sets: Sequence[Sequence[str]],
    thresholds: Mapping[str, float],
    level: float = 0.95,
) -> list[TailRow]:
    """Per-label and overall tail shares with exact confidence intervals. Labels of the images
    without a threshold get a row too (all their images under `no_threshold`)."""
    scores_arr = np.asarray(scores, dtype=np.float64)
    if len(scores_arr) != len(label_sets):
        raise ValueError(f"{len(scores_arr)} scores but {len(label_sets)} label sets")
    seen = dict.fromkeys(label for labels in label_sets for label in labels)
    rows = []
    for label in [*thresholds, *(label for label in seen if label not in thresholds)]:
        members = np.array([label in labels for labels in label_sets], dtype=bool)
        tau = thresholds.get(label)
        taus = np.full(int(members.sum()), math.nan if tau is None else tau)
        rows.append(_row(label, scores_arr[members], taus, tau, level))
    per_image = np.array(
        [math.nan if (t := image_threshold(labels, thresholds)) is None else t for labels in label_sets],
        dtype=np.float64,
    )
    rows.append(_row("overall", scores_arr, per_image, None, level))
    return rows


def tail_document(rows: Sequence[TailRow], images: int, not_scored: Mapping[str, int]) -> dict:
    """What `craft cas score` writes as its tail report: the totals, which add up (`images` =
    `scored` + the `not_scored` counts; `scored` = the overall row's n + nan_scores + no_threshold),
    and one row per label plus `overall`."""
    overall = rows[-1]
    scored = overall.n + overall.nan_scores + overall.no_threshold
    if scored + sum(not_scored.values()) != images:
        raise ValueError(f"{images} images but {scored} scored and {sum(not_scored.values())} not scored")
    return {
        "images": images,
        "scored": scored,
        "in_shares": overall.n,
        "nan_scores": overall.nan_scores,
        "no_threshold": overall.no_threshold,
        "not_scored": dict(not_scored),
        "groups": [r.as_json() for r in rows],
    }
