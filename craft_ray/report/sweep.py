"""The `--sweep DIR` section of `craft report`: the best trial per dataset (and per method) of a
`craft sweep`, and heatmaps of the validation metric over the swept reward weights.

It reads what the sweep wrote: `results.parquet` (one row per trial) and `sweep.json` (its spec).
A heatmap cell is the mean final metric of the completed trials with those two weights (over the
other swept values); trials that ASHA stopped early are not averaged in (their metric is from an
earlier step) and a cell with only such trials is marked "stopped".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from craft_ray.errors import EvaluationError
from craft_ray.report import figures
from craft_ray.report.tables import Table, num, to_markdown

RESULTS, STATE, WEIGHTS = "results.parquet", "sweep.json", "reward.weights."


def load_sweep(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / RESULTS).is_file() or not (sweep_dir / STATE).is_file():
        raise EvaluationError(
            f"{sweep_dir}: not a finished sweep (needs {RESULTS} and {STATE} from craft sweep)"
        )
    spec = json.loads((sweep_dir / STATE).read_text())["identity"]["spec"]
    return pq.read_table(sweep_dir / RESULTS).to_pylist(), spec


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _label(key: str) -> str:
    return key.removeprefix(WEIGHTS)


def heatmap_grid(rows: list[dict], keys: list[str], metric: str):
    """(x values, y values, mean matrix, stopped-only mask) over the two weight keys (y: one row if
    only one key is swept)."""
    xk, yk = keys[0], keys[1] if len(keys) > 1 else None
    xs = sorted({r[xk] for r in rows if r[xk] is not None})
    ys = sorted({r[yk] for r in rows if r[yk] is not None}) if yk else [None]
    values = np.full((len(ys), len(xs)), np.nan)
    stopped = np.zeros_like(values, dtype=bool)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            cell = [r for r in rows if r[xk] == x and (yk is None or r[yk] == y)]
            done = [r[metric] for r in cell if r["status"] == "completed" and _finite(r[metric])]
            if done:
                values[i, j] = float(np.mean(done))
            stopped[i, j] = not done and any(r["status"] == "stopped" for r in cell)
    return xs, ys, values, stopped


def swept_weight_keys(rows: list[dict]) -> list[str]:
    """The reward-weight columns with more than one value among `rows`, most values first."""
    keys = [k for k in rows[0] if k.startswith(WEIGHTS)]
    counts = {k: len({r[k] for r in rows if r[k] is not None}) for k in keys}
    return sorted((k for k in keys if counts[k] > 1), key=lambda k: (-counts[k], k))


def best_table(rows: list[dict], metric: str, better: Callable[[float, float], bool], by: tuple[str, ...]):
    best: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda r: r["trial"]):
        if row["status"] != "completed" or not _finite(row[f"final_{metric}"]):
            continue
        key = tuple(row[k] for k in by)
        if key not in best or better(row[f"final_{metric}"], best[key][f"final_{metric}"]):
            best[key] = row
    return best


def _swept(row: dict) -> str:
    items = [(k, v) for k, v in row.items() if "." in k and v is not None]  # the swept config keys
    return (
        ", ".join(f"{_label(k)}={v:g}" if isinstance(v, float) else f"{_label(k)}={v}" for k, v in items)
        or "-"
    )


def sweep_section(sweep_dir: str | Path) -> Callable[[list, Path], str]:
    """A report section (see `craft_ray.report.build.SECTIONS`) for the sweep in `sweep_dir`."""

    def section(runs: list, fig_dir: Path) -> str:
        rows, spec = load_sweep(sweep_dir)
        metric = spec["metric"]
        mode = spec.get("mode") or {"val_cas": "max", "val_tail": "min"}[metric]
        better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        parts = [
            f"## Sweep {spec['name']}\n\n{len(rows)} trials in {sweep_dir}; metric {metric} ({mode} is better).\n"
        ]
        overall = Table(
            f"Best trial per dataset ({metric} at the last step)",
            ["dataset", "method", "trial", "swept values", metric, "best.yaml"],
        )
        for (dataset,), row in sorted(best_table(rows, metric, better, ("dataset",)).items()):
            path = Path(sweep_dir) / "best" / f"{dataset}.yaml"
            overall.rows.append(
                [dataset, row["method"], row["trial"], _swept(row), num(row[f"final_{metric}"], 4), str(path)]
            )
        parts.append(to_markdown(overall))
        per_method = Table(
            "Best trial per dataset and method",
            ["dataset", "method", "trials", "completed", "stopped", "error", "best trial", metric],
        )
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            groups.setdefault((row["dataset"], row["method"]), []).append(row)
        best = best_table(rows, metric, better, ("dataset", "method"))
        for key, group in sorted(groups.items()):
            count = {s: sum(r["status"] == s for r in group) for s in ("completed", "stopped", "error")}
            top = best.get(key)
            per_method.rows.append(
                [
                    *key,
                    str(len(group)),
                    *(str(count[s]) for s in count),
                    top["trial"] if top else "-",
                    num(top[f"final_{metric}"], 4) if top else "-",
                ]
            )
        parts.append(to_markdown(per_method))
        for (dataset, method), group in sorted(groups.items()):
            keys = swept_weight_keys(group)
            if not keys:
                continue
            xs, ys, values, stopped = heatmap_grid(group, keys[:2], f"final_{metric}")
            name = f"sweep_{dataset}_{method}.png"
            figures.weight_heatmap(
                xs,
                ys,
                values,
                stopped,
                _label(keys[0]),
                _label(keys[1]) if len(keys) > 1 else "",
                f"{dataset} / {method}: {metric} ({mode} is better)"
                + (f"; mean over {', '.join(_label(k) for k in keys[2:])}" if len(keys) > 2 else ""),
                fig_dir / name,
            )
            parts.append(f"![{dataset} {method} reward weights]({fig_dir.name}/{name})\n")
        return "\n".join(parts)

    return section
