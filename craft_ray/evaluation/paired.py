"""Paired comparisons of evaluated runs, with bootstrap intervals that carry every source of noise.

Two runs evaluated with the same request share their label sets and initial noise image by image,
so their difference is measured *paired*: each bootstrap replicate resamples the same image
indices in both runs. The tail share also rests on the real-image thresholds, which are low
quantiles of a few dozen real images per label: each replicate also redraws those real images
(within each label, as the thresholds were computed) and recomputes the thresholds, so a tail
interval includes the thresholds' own noise. The out-of-family classifier's AUROC and accuracy
on the conditioned labels are compared the same way.

A **win** is a difference whose interval excludes zero in the better direction; a **loss** one
that excludes zero in the worse direction; anything else is no difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from craft_ray.evaluation.metrics import label_accuracy, members

_CHUNK = 200  # replicates computed at once (bounds memory at CHUNK x images x labels)


@dataclass
class RunScores:
    """What a comparison needs of one evaluated run (columns of its scores.parquet)."""

    cas: np.ndarray  # (n,)
    label_sets: list[list[str]]
    keys: list[tuple]  # (image_id, seed, labels): equal keys = the same image request
    oof_prob: np.ndarray | None = None  # (n, len(oof_labels))

    @classmethod
    def from_table(cls, table) -> RunScores:
        names = table.column_names
        sets = table.column("labels").to_pylist()
        keys = list(
            zip(
                table.column("image_id").to_pylist(),
                table.column("seed").to_pylist(),
                (tuple(s) for s in sets),
                strict=True,
            )
        )
        oof = np.asarray(table.column("oof_prob").to_pylist(), dtype=float) if "oof_prob" in names else None
        cas = np.asarray(table.column("cas").to_numpy(zero_copy_only=False), dtype=float)
        return cls(cas, sets, keys, oof)


@dataclass
class RealScores:
    """The calibration's real images: their CAS and label sets, and the quantile of the thresholds."""

    cas: np.ndarray
    label_sets: list[list[str]]
    q: float


@dataclass
class OOFSpec:
    labels: list[str]  # the classifier's label order (columns of oof_prob)
    multilabel: bool


def is_paired(a: RunScores, b: RunScores) -> bool:
    return len(a.keys) == len(b.keys) and a.keys == b.keys


# -- replicate statistics ---------------------------------------------------------------------


def _interval(samples: np.ndarray, level: float) -> list[float]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return [math.nan, math.nan]
    alpha = (1 - level) / 2
    return [float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))]


def _batched_auroc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Row-wise AUROC of (m, n) scores against (m, n) booleans (mid-ranks for ties); NaN without both classes."""
    ranks = stats.rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1).astype(float)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def threshold_replicates(
    real: RealScores, labels: Sequence[str], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, len(labels)) thresholds: per label, the q-quantile of its real images redrawn with
    replacement (NaN for a label without real images)."""
    out = np.full((n_boot, len(labels)), np.nan)
    for j, label in enumerate(labels):
        pool = real.cas[members(real.label_sets, label)]
        pool = pool[np.isfinite(pool)]
        if len(pool):
            out[:, j] = np.quantile(pool[rng.integers(0, len(pool), (n_boot, len(pool)))], real.q, axis=1)
    return out


def _image_thresholds(membership: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(m, n): each image's threshold under each row of (m, L) thresholds = the lowest of its labels'
    (NaN when none of its labels has one), as `craft_ray.cas.tail.image_threshold`."""
    masked = np.where(membership[None], thresholds[:, None, :], np.inf)
    low = masked.min(axis=2)
    return np.where(np.isfinite(low), low, np.nan)


class _Run:
    """One run's per-image quantities, precomputed for fast replicates."""

    def __init__(self, scores: RunScores, labels: Sequence[str], oof: OOFSpec | None):
        self.scores, self.labels = scores, list(labels)
        self.membership = np.array(
            [[label in ls for label in self.labels] for ls in scores.label_sets], dtype=bool
        ).reshape(len(scores.label_sets), len(self.labels))
        self.oof_columns: dict[str, np.ndarray] = {}
        self.correct = None
        if oof is not None and scores.oof_prob is not None and len(scores.oof_prob):
            for label in self.labels:
                if label in oof.labels:
                    self.oof_columns[label] = scores.oof_prob[:, oof.labels.index(label)]
            self.correct = label_accuracy(
                scores.oof_prob, scores.label_sets, oof.labels, self.labels, oof.multilabel
            )

    def statistics(self, idx: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
        """Per replicate row of `idx` (m, n) and `thresholds` (m, L): CAS mean, tail shares (overall
        and per label), out-of-family AUROC (per label and macro) and accuracy."""
        cas = self.scores.cas[idx]
        member = self.membership[idx]  # (m, n, L)
        out: dict[str, np.ndarray] = {"cas": np.nanmean(cas, axis=1)}
        per_image = np.take_along_axis(_image_thresholds(self.membership, thresholds), idx, axis=1)
        placed = np.isfinite(per_image) & np.isfinite(cas)
        below = placed & (cas < np.where(placed, per_image, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["tail:overall"] = below.sum(1) / placed.sum(1)
            for j, label in enumerate(self.labels):
                in_label = member[:, :, j] & np.isfinite(cas) & np.isfinite(thresholds[:, j : j + 1])
                under = in_label & (cas < np.where(in_label, thresholds[:, j : j + 1], 0.0))
                out[f"tail:{label}"] = under.sum(1) / in_label.sum(1)
        if self.oof_columns:
            aurocs = []
            for j, label in enumerate(self.labels):
                if label in self.oof_columns:
                    auc = _batched_auroc(self.oof_columns[label][idx], member[:, :, j])
                    out[f"oof_auroc:{label}"] = auc
                    aurocs.append(auc)
            stacked = np.stack(aurocs, axis=1)
            finite = np.isfinite(stacked)  # a label without both classes in a resample has no AUROC
            count = finite.sum(axis=1)
            total = np.where(finite, stacked, 0.0).sum(axis=1)
            out["oof_auroc:macro"] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            out["oof_accuracy"] = np.nanmean(self.correct[idx], axis=1)
        return out


def _point_thresholds(thresholds: dict[str, float], labels: Sequence[str]) -> np.ndarray:
    return np.array([[thresholds.get(label, np.nan) for label in labels]], dtype=float)


# Metric direction: +1 higher is better, -1 lower is better.
def _direction(metric: str) -> int:
    return -1 if metric.startswith("tail") else 1


def verdict(diff_ci: Sequence[float], better: int) -> str:
    """'win' if the interval of (run - baseline) excludes zero in the better direction, 'loss' if
    in the worse one, else 'no difference'."""
    lo, hi = diff_ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    if (better > 0 and lo > 0) or (better < 0 and hi < 0):
        return "win"
    if (better > 0 and hi < 0) or (better < 0 and lo > 0):
        return "loss"
    return "no difference"


def run_intervals(
    run: RunScores,
    labels: Sequence[str],
    thresholds: dict[str, float],
    real: RealScores | None,
    oof: OOFSpec | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """One run's statistics with bootstrap intervals: images resampled, and the real calibration
    images too when `real` is given (the tail then includes the thresholds' noise)."""
    r = _Run(run, labels, oof)
    n = len(run.cas)
    point = r.statistics(np.arange(n)[None], _point_thresholds(thresholds, labels))
    rng = np.random.default_rng([seed, 17])
    reps: dict[str, list[np.ndarray]] = {k: [] for k in point}
    for start in range(0, n_boot, _CHUNK):
        m = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, (m, n))
        taus = (
            threshold_replicates(real, labels, m, rng)
            if real is not None
            else np.repeat(_point_thresholds(thresholds, labels), m, 0)
        )
        for key, values in r.statistics(idx, taus).items():
            reps[key].append(values)
    return {
        key: {"value": float(point[key][0]), "ci": _interval(np.concatenate(reps[key]), level)}
        for key in point
    }


def paired_comparison(
    run: RunScores,
    baseline: RunScores,
    labels: Sequence[str],
    thresholds: dict[str, float],
    real: RealScores | None,
    oof: OOFSpec | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    keep_replicates: bool = False,
) -> dict[str, Any]:
    """`run` - `baseline` for every statistic of `_Run.statistics`, with percentile-bootstrap
    intervals: paired (the same image indices in both runs) when both were evaluated on the same
    image requests, else each run resampled on its own; the thresholds redrawn from the real
    calibration images when `real` is given (both runs share each replicate's thresholds).
    Tail shares also get the relative reduction (baseline - run) / baseline."""
    paired = is_paired(run, baseline)
    a, b = _Run(run, labels, oof), _Run(baseline, labels, oof)
    na, nb = len(run.cas), len(baseline.cas)
    point_t = _point_thresholds(thresholds, labels)
    pa, pb = a.statistics(np.arange(na)[None], point_t), b.statistics(np.arange(nb)[None], point_t)
    keys = [k for k in pa if k in pb]
    rng = np.random.default_rng([seed, 23])
    reps: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    rel: dict[str, list[np.ndarray]] = {k: [] for k in keys if k.startswith("tail")}
    for start in range(0, n_boot, _CHUNK):
        m = min(_CHUNK, n_boot - start)
        ia = rng.integers(0, na, (m, na))
        ib = ia if paired else rng.integers(0, nb, (m, nb))
        taus = threshold_replicates(real, labels, m, rng) if real is not None else np.repeat(point_t, m, 0)
        sa, sb = a.statistics(ia, taus), b.statistics(ib, taus)
        for key in keys:
            reps[key].append(sa[key] - sb[key])
            if key in rel:
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel[key].append(np.where(sb[key] > 0, (sb[key] - sa[key]) / sb[key], np.nan))
    out: dict[str, Any] = {
        "paired": paired,
        "n_run": na,
        "n_baseline": nb,
        "threshold_noise": real is not None,
    }
    metrics: dict[str, Any] = {}
    for key in keys:
        samples = np.concatenate(reps[key])
        diff = float(pa[key][0] - pb[key][0])
        row = {
            "run": float(pa[key][0]),
            "baseline": float(pb[key][0]),
            "difference": diff,
            "ci": _interval(samples, level),
        }
        row["verdict"] = verdict(row["ci"], _direction(key))
        if key in rel:
            base = float(pb[key][0])
            row["relative_reduction"] = (base - float(pa[key][0])) / base if base > 0 else math.nan
            row["relative_reduction_ci"] = _interval(np.concatenate(rel[key]), level)
        if keep_replicates:
            row["replicates"] = samples
        metrics[key] = row
    out["metrics"] = metrics
    return out


def pool_comparisons(comparisons: list[dict[str, Any]], level: float = 0.95) -> dict[str, dict[str, Any]]:
    """The mean over independent experiments (seeds) of each statistic's difference, with the CI of
    that mean: each pooled replicate is the mean of one replicate per experiment (their bootstraps
    are independent). Needs `paired_comparison(..., keep_replicates=True)` results."""
    keys = set.intersection(*(set(c["metrics"]) for c in comparisons)) if comparisons else set()
    out = {}
    for key in sorted(keys):
        rows = [c["metrics"][key] for c in comparisons]
        replicates = np.mean(np.stack([r["replicates"] for r in rows]), axis=0)
        ci = _interval(replicates, level)
        out[key] = {
            "run": float(np.mean([r["run"] for r in rows])),
            "baseline": float(np.mean([r["baseline"] for r in rows])),
            "difference": float(np.mean([r["difference"] for r in rows])),
            "ci": ci,
            "verdict": verdict(ci, _direction(key)),
            "experiments": len(rows),
        }
        if key.startswith("tail") and out[key]["baseline"] > 0:
            out[key]["relative_reduction"] = -out[key]["difference"] / out[key]["baseline"]
    return out
