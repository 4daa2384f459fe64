"""The statistics of a preference study: Wilson intervals, the exact sign test, Cohen's and Fleiss' kappa."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from scipy.stats import binomtest


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ((nan, nan) when n == 0)."""
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of wins vs losses (ties left out): P under Binomial(n, 1/2)."""
    n = wins + losses
    return float(binomtest(wins, n, 0.5).pvalue) if n else math.nan


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' categorical ratings of the same items."""
    if len(a) != len(b) or not a:
        raise ValueError("Cohen's kappa needs two equally long, non-empty rating lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories count table (every item rated by the same number m >= 2)."""
    if not table:
        raise ValueError("Fleiss' kappa needs at least one item")
    m = sum(table[0])
    if m < 2 or any(sum(row) != m for row in table):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings per item")
    n = len(table)
    p_items = [(sum(c * c for c in row) - m) / (m * (m - 1)) for row in table]
    shares = [sum(row[j] for row in table) / (n * m) for j in range(len(table[0]))]
    p_bar, p_e = sum(p_items) / n, sum(s * s for s in shares)
    return 1.0 if p_e == 1 else (p_bar - p_e) / (1 - p_e)
