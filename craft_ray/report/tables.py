"""Metric tables as plain data (title, columns, rows), rendered to markdown here and to rich by the CLI.

`run_tables(metrics)`: the tables of one evaluation (what `craft evaluate` prints).
The cross-run tables of `craft report` are built in `craft_ray.report.build`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from craft_ray.cas.score import DIMENSIONS


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def with_ci(value: Any, ci: Sequence[Any] | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not ci or any(c is None or (isinstance(c, float) and math.isnan(c)) for c in ci):
        return num(value, digits)
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def pct(value: Any, ci: Sequence[Any] | None = None) -> str:
    """A share in %, with its CI."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return with_ci(100 * value, [100 * c for c in ci] if ci else None, 1) + " %"


def cas_table(metrics: dict[str, Any]) -> Table:
    level = int(round(100 * metrics.get("ci_level", 0.95)))
    cols = ["group", "n", f"CAS mean [{level}% CI]", "median", "q05"] + list(DIMENSIONS)
    table = Table(f"CAS of {metrics['model']} (evaluation path; mean of each dimension)", cols)
    groups = [("overall", metrics["cas"]["overall"])] + list(metrics["cas"]["per_label"].items())
    for name, block in groups:
        cas = block.get("cas", {})
        q = cas.get("quantiles", {})
        table.rows.append(
            [
                name,
                str(cas.get("n", 0)),
                with_ci(cas.get("mean"), cas.get("mean_ci")),
                num(q.get("0.5", {}).get("value")),
                num(q.get("0.05", {}).get("value")),
                *[num(block.get(d, {}).get("mean")) for d in DIMENSIONS],
            ]
        )
    return table


def tail_table(metrics: dict[str, Any]) -> Table:
    table = Table(
        f"Low-alignment tail of {metrics['model']}: share below the real-image q={metrics.get('threshold_q')} "
        "threshold (Wilson CI)",
        ["group", "threshold", "images", "below", "share"],
        note=f"thresholds: {metrics.get('calibration', '')}",
    )
    for group, row in metrics["tail"].items():
        table.rows.append(
            [group, num(row.get("threshold")), str(row["n"]), str(row["below"]), pct(row["share"], row["ci"])]
        )
    return table


def reduction_table(metrics: dict[str, Any], baseline: str) -> Table:
    comp = metrics["baselines"][baseline]
    table = Table(
        f"Tail reduction of {metrics['model']} vs {baseline}",
        ["group", "run", "baseline", "reduction (points)", "relative"],
        note=(
            "paired bootstrap over the same label sets and seeds" if comp["paired"] else "unpaired bootstrap"
        )
        + f"; CAS mean gain {with_ci(comp['cas_mean_gain']['value'], comp['cas_mean_gain']['ci'])}",
    )
    for group, row in comp["tail"].items():
        table.rows.append(
            [
                group,
                pct(row["run_share"]),
                pct(row["baseline_share"]),
                with_ci(row["points"], row["points_ci"], 1),
                with_ci(row["relative_pct"], row["relative_pct_ci"], 1) + " %"
                if not math.isnan(row["relative_pct"])
                else "-",
            ]
        )
    return table


def out_of_family_table(metrics: dict[str, Any]) -> Table:
    oof = metrics["out_of_family"]
    table = Table(
        f"Out-of-family evaluator on {metrics['model']}: agreement with the conditioned labels",
        ["group", "agreement", "AUROC"] + (["accuracy"] if "accuracy" in oof else []),
        note=f"evaluator: {oof['classifier']}"
        + (f"; accuracy: {oof['accuracy']['kind']}" if "accuracy" in oof else ""),
    )
    overall = [
        "overall",
        with_ci(oof["agreement"]["mean"], oof["agreement"]["mean_ci"]),
        num(oof["auroc"]["macro"]),
    ]
    if "accuracy" in oof:  # evaluations written before the accuracy column have none
        overall.append(with_ci(oof["accuracy"]["mean"], oof["accuracy"]["mean_ci"]))
    table.rows.append(overall)
    for label, block in oof["agreement_per_label"].items():
        row = [label, with_ci(block["mean"], block["mean_ci"]), num(oof["auroc"]["per_label"].get(label))]
        table.rows.append(row + (["-"] if "accuracy" in oof else []))
    return table


def downstream_table(metrics: dict[str, Any]) -> Table:
    d = metrics["downstream"]
    table = Table(
        f"Downstream classification: AUROC on the real {metrics['split']} split ({d['n_test']} images)",
        ["label", f"trained on {d['n_generated']} generated", f"trained on {d['n_real']} real"],
    )
    for label in d["generated"]["per_label"]:
        table.rows.append(
            [label, num(d["generated"]["per_label"][label]), num(d["real"]["per_label"][label])]
        )
    table.rows.append(["macro", num(d["generated"]["macro"]), num(d["real"]["macro"])])
    return table


MEMORISATION_COLUMNS = ["copy threshold", "copies: generated", "copies: held-out real", "max similarity"]


def memorisation_cells(m: dict[str, Any]) -> list[str]:
    """The copy threshold (how it was set), the generated and the held-out copy rates (CIs), the
    highest similarity: what `craft evaluate` and `craft report` show of one run's memorisation."""
    if m.get("threshold_source") == "auto":
        held_n = (m.get("heldout") or {}).get("n", "?")
        how = f"{num(m['threshold'])} [{num(m['threshold_ci'][0])}, {num(m['threshold_ci'][1])}]"
        how += f" (q{m['threshold_q']:g} of {held_n} held-out)"
    else:
        how = f"{num(m['threshold'])} (fixed)"
    held = m.get("heldout") or {}
    held_cell = pct(held["share"], held["ci"]) + f" of {held['n']}" if "copies" in held else "-"
    return [how, pct(m["share"], m["ci"]) + f" of {m['n']}", held_cell, num(m["similarity_quantiles"]["1"])]


def memorisation_table(metrics: dict[str, Any]) -> Table:
    m = metrics["memorisation"]
    table = Table(
        f"Memorisation of {metrics['model']}: nearest real training image ({m['embedding']} embedding)",
        MEMORISATION_COLUMNS,
        note=f"top pairs: {m.get('grid', '')}; a copy: similarity at or above the threshold",
    )
    table.rows.append(memorisation_cells(m))
    return table


def audit_table(metrics: dict[str, Any], limit: int | None = None) -> Table:
    a = metrics["audit"]
    path = "MLLM" if a["path"] == "mllm" else "VLM surrogate"
    table = Table(
        f"Checklist audit of {metrics['model']} ({path}: {a.get('model', '')})",
        ["item", "question", "images", "pass rate", "mean P"],
    )
    items = sorted(a["items"].items(), key=lambda kv: kv[1]["pass_rate"])
    for item, row in items[:limit] if limit else items:
        table.rows.append(
            [item, row["question"], str(row["n"]), pct(row["pass_rate"], row["ci"]), num(row["mean_p"])]
        )
    return table


def run_tables(metrics: dict[str, Any], audit_limit: int | None = None) -> list[Table]:
    tables = [cas_table(metrics), tail_table(metrics)]
    tables += [reduction_table(metrics, name) for name in metrics.get("baselines", {})]
    tables += [out_of_family_table(metrics), downstream_table(metrics), memorisation_table(metrics)]
    tables.append(audit_table(metrics, audit_limit))
    return tables


def to_markdown(table: Table) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"**{table.title}**", "", "| " + " | ".join(map(cell, table.columns)) + " |"]
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"_{table.note}_"]
    return "\n".join(lines) + "\n"
