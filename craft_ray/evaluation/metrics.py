"""The metric tables of an evaluation, computed from scores.parquet and the real data.

Each function takes plain arrays and returns JSON-ready dicts, so tests can feed constructed
inputs with known answers. Per-label rows count an image under every label of its label set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from craft_ray.cas.score import DIMENSIONS
from craft_ray.cas.tail import image_threshold
from craft_ray.evaluation.memorisation import (
    calibrated_threshold,
    copy_share,
    heldout_flags,
    nearest_neighbours,
    threshold_interval,
)
from craft_ray.evaluation.stats import auroc, bootstrap_difference, bootstrap_summary, share_interval

SCORE_COLUMNS = ("cas", *DIMENSIONS)


def members(label_sets: Sequence[Sequence[str]], label: str) -> np.ndarray:
    return np.array([label in ls for ls in label_sets], dtype=bool)


def cas_tables(
    columns: Mapping[str, Sequence[float]],
    label_sets: Sequence[Sequence[str]],
    labels: Sequence[str],
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """Mean and quantiles (bootstrap CIs) of CAS and each dimension, overall and per label."""

    def block(mask: np.ndarray) -> dict[str, Any]:
        return {
            col: bootstrap_summary(np.asarray(columns[col])[mask], n_boot=n_boot, level=level, seed=seed)
            for col in SCORE_COLUMNS
            if col in columns and np.isfinite(np.asarray(columns[col], dtype=float)).any()
        }

    everything = np.ones(len(label_sets), dtype=bool)
    return {
        "overall": block(everything),
        "per_label": {label: block(members(label_sets, label)) for label in labels},
    }


def _share_row(below: int, n: int, level: float, **extra: Any) -> dict[str, Any]:
    lo, hi = share_interval(below, n, level)
    return {"n": n, "below": below, "share": below / n if n else math.nan, "ci": [lo, hi], **extra}


def tail_flags(
    cas: Sequence[float], label_sets: Sequence[Sequence[str]], thresholds: Mapping[str, float]
) -> dict[str, np.ndarray]:
    """Per group: the images it counts (mask) and which of them are below threshold. A label
    counts its images against its own threshold; 'overall' counts each image against the lowest
    threshold of its labels (below all of them)."""
    scores = np.asarray(cas, dtype=np.float64)
    out = {}
    for label, tau in thresholds.items():
        mask = members(label_sets, label)
        out[label] = np.where(mask, scores < tau, False), mask
    per_image = np.array([image_threshold(ls, thresholds) for ls in label_sets], dtype=np.float64)
    known = ~np.isnan(per_image)
    out["overall"] = np.where(known, scores < np.where(known, per_image, 0.0), False), known
    return out


def tail_table(
    cas: Sequence[float],
    label_sets: Sequence[Sequence[str]],
    thresholds: Mapping[str, float],
    labels: Sequence[str],
    level: float,
) -> dict[str, Any]:
    """Low-alignment tail: per label and overall, the share below the real-image threshold (Wilson CI)."""
    flags = tail_flags(cas, label_sets, {k: v for k, v in thresholds.items() if k in labels})
    table = {}
    for group, (below, mask) in flags.items():
        extra = {"threshold": thresholds.get(group)} if group != "overall" else {}
        table[group] = _share_row(int(below[mask].sum()), int(mask.sum()), level, **extra)
    return table


def tail_reduction(
    run: tuple[Sequence[float], Sequence[Sequence[str]]],
    baseline: tuple[Sequence[float], Sequence[Sequence[str]]],
    thresholds: Mapping[str, float],
    labels: Sequence[str],
    paired: bool,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """Tail share of `run` vs `baseline` per label and overall: reduction in percentage points
    (baseline - run, x100) and relative % ((baseline - run) / baseline x100), bootstrap CIs
    (paired when both were evaluated on the same label sets and seeds)."""
    thresholds = {k: v for k, v in thresholds.items() if k in labels}
    run_flags = tail_flags(run[0], run[1], thresholds)
    base_flags = tail_flags(baseline[0], baseline[1], thresholds)
    out = {}
    for group in run_flags:
        (rb, rm), (bb, bm) = run_flags[group], base_flags[group]
        if paired:
            keep = rm & bm
            a, b = rb[keep].astype(float), bb[keep].astype(float)
        else:
            a, b = rb[rm].astype(float), bb[bm].astype(float)
        diff = bootstrap_difference(a, b, paired, n_boot, level, seed)
        out[group] = {
            "run_share": float(a.mean()) if len(a) else math.nan,
            "baseline_share": float(b.mean()) if len(b) else math.nan,
            "points": 100 * diff["points"],
            "points_ci": [100 * x for x in diff["points_ci"]],
            "relative_pct": 100 * diff["relative"],
            "relative_pct_ci": [100 * x for x in diff["relative_ci"]],
            "n_run": int(len(a)),
            "n_baseline": int(len(b)),
        }
    return out


def auroc_table(
    probs: np.ndarray, label_sets: Sequence[Sequence[str]], labels: Sequence[str]
) -> dict[str, Any]:
    """AUROC of each label's probability column against the label sets, and the macro mean over
    labels where both classes occur."""
    per_label = {}
    for j, label in enumerate(labels):
        per_label[label] = auroc(members(label_sets, label), np.asarray(probs)[:, j])
    finite = [v for v in per_label.values() if not math.isnan(v)]
    return {"per_label": per_label, "macro": float(np.mean(finite)) if finite else math.nan}


def label_accuracy(
    probs: np.ndarray,
    label_sets: Sequence[Sequence[str]],
    oof_labels: Sequence[str],
    labels: Sequence[str],
    multilabel: bool,
) -> np.ndarray:
    """Per image, the classifier's accuracy on the conditioned labels: multi-label, the share of
    the evaluated labels whose decision at P = 0.5 matches presence in the label set; single-label,
    1 when the top class is the conditioned label, else 0."""
    probs = np.asarray(probs, dtype=np.float64).reshape(len(label_sets), len(oof_labels))
    if not multilabel:
        top = [oof_labels[int(i)] for i in probs.argmax(axis=1)] if len(probs) else []
        return np.array([float(t in ls) for t, ls in zip(top, label_sets, strict=True)])
    columns = [oof_labels.index(label) for label in labels if label in oof_labels]
    decided = probs[:, columns] >= 0.5
    present = np.array([[oof_labels[j] in ls for j in columns] for ls in label_sets], dtype=bool)
    return (
        (decided == present.reshape(decided.shape)).mean(axis=1) if columns else np.full(len(probs), np.nan)
    )


def out_of_family_table(
    oof_prob: np.ndarray,
    agreement: Sequence[float],
    label_sets: Sequence[Sequence[str]],
    oof_labels: Sequence[str],
    labels: Sequence[str],
    n_boot: int,
    level: float,
    seed: int,
    multilabel: bool = True,
) -> dict[str, Any]:
    """Does a classifier of another family recognise the conditioned labels? Agreement (mean, CI)
    overall and per label, its accuracy on the conditioned labels, and the AUROC of its
    probabilities against them."""
    agree = np.asarray(agreement, dtype=np.float64)
    rocs = auroc_table(np.asarray(oof_prob), label_sets, oof_labels)
    correct = label_accuracy(np.asarray(oof_prob), label_sets, oof_labels, labels, multilabel)
    return {
        "accuracy": {
            **bootstrap_summary(correct, n_boot=n_boot, level=level, seed=seed),
            "kind": "per-label decisions at P = 0.5" if multilabel else "top-1 class",
        },
        "agreement": bootstrap_summary(agree, n_boot=n_boot, level=level, seed=seed),
        "agreement_per_label": {
            label: bootstrap_summary(agree[members(label_sets, label)], n_boot=n_boot, level=level, seed=seed)
            for label in labels
        },
        "auroc": {
            "per_label": {k: v for k, v in rocs["per_label"].items() if k in labels},
            "macro": rocs["macro"],
        },
    }


def memorisation_table(
    generated: np.ndarray,
    real: np.ndarray,
    generated_ids: Sequence[str],
    real_ids: Sequence[str],
    threshold: float | None,
    top: int,
    level: float,
    heldout: np.ndarray | None = None,
    q: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Nearest real training image of each generated one and the share of copies (at or above the
    copy threshold), beside the same share for held-out real images (`heldout`: embeddings of real
    images outside the training split, no copies by construction).

    `threshold` None calibrates it: the `q`-quantile of the held-out images' nearest-training
    similarity. The held-out rate is then counted leave-one-out (each held-out image against the
    threshold of the others), and the generated share's interval includes the threshold's own
    noise: the Wilson interval at the ends of the threshold's bootstrap interval. A fixed threshold
    gives plain Wilson intervals."""
    nn = nearest_neighbours(generated, real)
    held = nearest_neighbours(heldout, real).similarity if heldout is not None and len(heldout) else None
    calibrate = threshold is None
    if calibrate:
        if held is None or len(held) < 2:
            raise ValueError(
                "the copy threshold is calibrated on held-out real images (copy_threshold: auto), "
                "and there are fewer than 2"
            )
        threshold = calibrated_threshold(held, q)
        t_low, t_high = threshold_interval(held, q, n_boot, level, seed)
        copies, n = copy_share(nn.similarity, threshold)
        ci = [  # fewest copies at the highest plausible threshold, most at the lowest
            share_interval(copy_share(nn.similarity, max(threshold, t_high))[0], n, level)[0],
            share_interval(copy_share(nn.similarity, min(threshold, t_low))[0], n, level)[1],
        ]
        calibration: dict[str, Any] = {
            "threshold_source": "auto",
            "threshold_q": q,
            "threshold_ci": [t_low, t_high],
        }
        held_flags = heldout_flags(held, q)
    else:
        copies, n = copy_share(nn.similarity, threshold)
        ci = list(share_interval(copies, n, level))
        calibration = {"threshold_source": "fixed"}
        held_flags = None if held is None else held >= threshold
    order = np.argsort(-nn.similarity, kind="stable")[:top]
    out: dict[str, Any] = {
        "threshold": threshold,
        **calibration,
        "n": n,
        "copies": copies,
        "share": copies / n if n else math.nan,
        "ci": ci,
        "similarity_quantiles": _quantiles(nn.similarity),
        "top_pairs": [
            {
                "generated": generated_ids[i],
                "real": real_ids[int(nn.index[i])],
                "similarity": float(nn.similarity[i]),
            }
            for i in order
        ],
    }
    if held_flags is not None:
        k = int(held_flags.sum())
        out["heldout"] = {
            "n": int(len(held_flags)),
            "copies": k,
            "share": k / len(held_flags),
            "ci": list(share_interval(k, len(held_flags), level)),
            "counted": "leave-one-out" if calibrate else "at the fixed threshold",
            "similarity_quantiles": _quantiles(held),
        }
    return out


def _quantiles(similarity: np.ndarray) -> dict[str, float]:
    return {f"{q:g}": float(np.quantile(similarity, q)) for q in (0.5, 0.9, 0.99, 1.0)}


def audit_table(
    audit_items: Sequence[Sequence[str]],
    audit_p: Sequence[Sequence[float]],
    questions: Mapping[str, str],
    path: str,
    level: float,
) -> dict[str, Any]:
    """Pass rate (P(met) > 0.5) of every checklist item over the images it applies to (Wilson CI)."""
    values: dict[str, list[float]] = {}
    for items, probs in zip(audit_items, audit_p, strict=True):
        for item, p in zip(items, probs, strict=True):
            values.setdefault(item, []).append(float(p))
    rows = {}
    for item, ps in values.items():
        arr = np.asarray(ps)
        passed = int((arr > 0.5).sum())
        rows[item] = {
            "question": questions.get(item, item),
            "n": len(arr),
            "passed": passed,
            "pass_rate": passed / len(arr),
            "ci": list(share_interval(passed, len(arr), level)),
            "mean_p": float(arr.mean()),
        }
    return {"path": path, "items": rows}
