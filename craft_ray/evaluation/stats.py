"""Statistics for evaluation tables: bootstrap intervals, proportion intervals, AUROC.

Shares (a count out of n) get an exact-coverage-style interval (Wilson score by default,
Clopper-Pearson on request) rather than a bootstrap: it behaves at shares of 0 and 1 and at small n.
Differences between runs get a (paired) percentile bootstrap. Every function takes its randomness
from the seed it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_CHUNK = 256  # bootstrap resamples drawn at once (bounds memory at CHUNK x n indices)


def share_interval(
    k: int, n: int, level: float = 0.95, method: Literal["wilson", "exact"] = "wilson"
) -> tuple[float, float]:
    """Confidence interval of a proportion k/n: Wilson score ('wilson') or Clopper-Pearson ('exact',
    what `craft cas score`'s tail report uses, `craft_ray.cas.tail`)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method=method)
    return float(ci.low), float(ci.high)


def _resampled(n: int, n_boot: int, seed: int, statistic: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """statistic(indices (m, n)) -> (m, ...) for n_boot resamples of n items with replacement."""
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, n_boot, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, n_boot - start), n))
        parts.append(statistic(idx))
    return np.concatenate(parts)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def bootstrap_summary(
    values: Sequence[float],
    quantiles: Sequence[float] = SUMMARY_QUANTILES,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean and quantiles of `values`, each with a percentile-bootstrap confidence interval."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"n": 0, "mean": math.nan, "mean_ci": [math.nan, math.nan], "quantiles": {}}
    qs = np.asarray(quantiles, dtype=np.float64)

    def statistic(idx: np.ndarray) -> np.ndarray:
        sample = x[idx]
        return np.column_stack([sample.mean(axis=1), np.quantile(sample, qs, axis=1).T])

    boot = _resampled(len(x), n_boot, seed, statistic)
    point = [x.mean(), *np.quantile(x, qs)]
    cis = [_interval(boot[:, j], level) for j in range(boot.shape[1])]
    return {
        "n": int(len(x)),
        "mean": float(point[0]),
        "mean_ci": list(cis[0]),
        "std": float(x.std()),
        "quantiles": {
            f"{q:g}": {"value": float(p), "ci": list(ci)}
            for q, p, ci in zip(quantiles, point[1:], cis[1:], strict=True)
        },
    }


def bootstrap_difference(
    run: Sequence[float],
    baseline: Sequence[float],
    paired: bool,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Reduction of a mean (e.g. a tail share: 0/1 values) from `baseline` to `run`.

    points = baseline - run (in the units of the values, x100 for shares in percentage points);
    relative = (baseline - run) / baseline. Percentile bootstrap CIs; `paired` resamples the same
    indices in both (the runs were evaluated on the same label sets and seeds), else each
    independently.
    """
    a, b = np.asarray(run, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if paired and len(a) != len(b):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) == 0 or len(b) == 0:
        nan2 = [math.nan, math.nan]
        return {"points": math.nan, "points_ci": nan2, "relative": math.nan, "relative_ci": nan2}

    def statistic(idx: np.ndarray) -> np.ndarray:
        ia = idx[:, : len(a)] if paired else idx[:, : len(a)] % len(a)
        ib = idx[:, : len(b)] if paired else idx[:, len(a) :] % len(b)
        ma, mb = a[ia].mean(axis=1), b[ib].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(mb > 0, (mb - ma) / mb, np.nan)
        return np.column_stack([mb - ma, rel])

    if paired:
        boot = _resampled(len(a), n_boot, seed, statistic)
    else:  # one index matrix over both samples, split by position (each part uniform over its sample)
        rng = np.random.default_rng(seed)
        parts = []
        for start in range(0, n_boot, _CHUNK):
            m = min(_CHUNK, n_boot - start)
            idx = np.concatenate(
                [rng.integers(0, len(a), (m, len(a))), rng.integers(0, len(b), (m, len(b)))], 1
            )
            parts.append(statistic(idx))
        boot = np.concatenate(parts)
    ma, mb = a.mean(), b.mean()
    return {
        "points": float(mb - ma),
        "points_ci": list(_interval(boot[:, 0], level)),
        "relative": float((mb - ma) / mb) if mb > 0 else math.nan,
        "relative_ci": list(_interval(boot[:, 1], level)),
    }


def auroc(y_true: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting 1/2
    (the Mann-Whitney U statistic with mid-ranks). NaN when one class is absent."""
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
