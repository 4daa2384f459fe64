"""The demo's headline table: per method, CAS per dimension, the tail share below the real-image
thresholds, and the out-of-family classifier's label consistency; over several seeds, mean ± sd.

Read from each run's evaluation `metrics.json` (written by `craft evaluate`), so the table says
exactly what the evaluations measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from craft_ray.cas.score import DIMENSIONS

# (key, heading, better): the columns of the table, in order; better = +1 higher, -1 lower
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("cas", "CAS", 1),
    *((dim, dim, 1) for dim in DIMENSIONS),
    ("tail_share", "tail share", -1),
    ("oof_auroc", "OOF AUROC", 1),
    ("oof_accuracy", "OOF accuracy", 1),
    ("downstream_auroc", "downstream AUROC", 1),
)


def method_row(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one evaluated run."""
    cas = metrics["cas"]["overall"]
    oof = metrics["out_of_family"]
    row = {"cas": cas["cas"]["mean"], **{dim: cas[dim]["mean"] for dim in DIMENSIONS if dim in cas}}
    row["tail_share"] = metrics["tail"]["overall"]["share"]
    row["oof_auroc"] = oof["auroc"]["macro"]
    row["oof_accuracy"] = oof.get("accuracy", {}).get("mean", math.nan)
    row["downstream_auroc"] = metrics.get("downstream", {}).get("generated", {}).get("macro", math.nan)
    return {k: float(v) for k, v in row.items()}


def strict_json(value: Any) -> Any:
    """`value` with every NaN / infinity replaced by None, so the JSON written is strict (null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def aggregate(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{seed: {method: row}} -> {method: {column: {mean, sd, n, values}}} (sd: sample sd, ddof 1)."""
    methods: dict[str, dict[str, list[float]]] = {}
    for rows in per_seed.values():
        for method, row in rows.items():
            for key, value in row.items():
                methods.setdefault(method, {}).setdefault(key, []).append(value)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method, columns in methods.items():
        out[method] = {}
        for key, values in columns.items():
            x = np.asarray(values, dtype=float)
            finite = x[np.isfinite(x)]
            out[method][key] = {
                "mean": float(finite.mean()) if len(finite) else math.nan,
                "sd": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                "n": int(len(finite)),
                "values": [float(v) for v in x],
            }
    return out


# (statistic in the paired comparison, heading, better = +1 higher / -1 lower, scale for display)
DIFFERENCES: tuple[tuple[str, str, int, float], ...] = (
    ("oof_auroc:macro", "OOF AUROC", 1, 1.0),
    ("oof_accuracy", "OOF accuracy", 1, 1.0),
    ("cas", "CAS", 1, 1.0),
    ("tail:overall", "tail share (points)", -1, 100.0),
)


def seed_differences(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{baseline: {statistic: {difference, ci, verdict}}} of the main run's paired comparisons in its
    metrics.json (written by `craft evaluate`: same label sets and noise, thresholds' noise included)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for baseline, comp in metrics.get("baselines", {}).items():
        rows = comp.get("differences", {}).get("metrics", {})
        out[baseline] = {
            key: {k: rows[key][k] for k in ("difference", "ci", "verdict")}
            for key, *_ in DIFFERENCES
            if key in rows
        }
    return out


def verdict_counts(per_seed: dict[int, dict[str, dict[str, Any]]], baseline: str) -> dict[str, str]:
    """Per statistic, in how many seeds the paired CI excluded zero in the better direction (wins)
    and in the worse one (losses): 'wins k/n, losses m/n'. A positive sign alone is no win."""
    out = {}
    for key, *_ in DIFFERENCES:
        verdicts = [d[baseline][key]["verdict"] for d in per_seed.values() if key in d.get(baseline, {})]
        if verdicts:
            n = len(verdicts)
            out[key] = f"wins {verdicts.count('win')}/{n}, losses {verdicts.count('loss')}/{n}"
    return out


def _cell(stats: dict[str, float] | float, percent: bool) -> str:
    if isinstance(stats, dict):
        mean, sd = stats["mean"], stats["sd"]
    else:
        mean, sd = stats, math.nan
    if not math.isfinite(mean):
        return "-"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    text = f"{mean * scale:.1f}" if percent else f"{mean:.3f}"
    if math.isfinite(sd):
        text += f" ± {sd * scale:.1f}" if percent else f" ± {sd:.3f}"
    return text + unit


def table_rows(
    summary: dict[str, dict[str, Any]], methods: Iterable[str]
) -> tuple[list[str], list[list[str]]]:
    """Heading and rows (strings) of the table: one row per method; cells are a value, or mean ± sd."""
    heading = ["method", *(title for _, title, _ in COLUMNS)]
    rows = []
    for method in methods:
        if method not in summary:
            continue
        row = summary[method]
        rows.append([method, *(_cell(row.get(key, math.nan), key == "tail_share") for key, _, _ in COLUMNS)])
    return heading, rows


def markdown_table(heading: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * len(heading)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
