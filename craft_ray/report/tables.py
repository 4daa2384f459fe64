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
    return f"{value:z.{digits}f}"  # z: a difference that rounds to zero is 0.000, never -0.000


def with_ci(value: Any, ci: Sequence[Any] | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not ci or any(c is None or (isinstance(c, float) and math.isnan(c)) for c in ci):
        return num(value, digits)
    return f"{value:z.{digits}f} [{ci[0]:z.{digits}f}, {ci[1]:z.{digits}f}]"


def pct(value: Any, ci: Sequence[Any] | None = None) -> str:
    """A share in %, with its CI."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return with_ci(100 * value, [100 * c for c in ci] if ci else None, 1) + " %"


def cas_table(metrics: dict[str, Any]) -> Table:
    level = int(round(100 * metrics.get("ci_level", 0.95)))
    cols = ["group", "n", f"CAS mean [{level}% CI]", "median", "q05"] + list(DIMENSIONS)
    table = Table(
        f"CAS of {metrics['model']} (evaluation path; mean of each dimension){in_reward_mark(metrics)}",
        cols,
        note=metrics.get("in_reward", {}).get("note", ""),
    )
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


def in_reward_mark(metrics: dict[str, Any]) -> str:
    """' [in-reward]' when the evaluation's CAS was computed by the run's own reward model."""
    return " [in-reward]" if metrics.get("in_reward", {}).get("cas") else ""


def tail_table(metrics: dict[str, Any]) -> Table:
    method = next(iter(metrics["tail"].values()), {}).get("ci_method", "Wilson score interval")
    table = Table(
        f"Low-alignment tail of {metrics['model']}: share below the real-image q={metrics.get('threshold_q')} "
        f"threshold{in_reward_mark(metrics)}",
        ["group", "threshold", "images", "below", "share"],
        note=f"CI: {method}; thresholds: {metrics.get('calibration', '')}",
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


DIFFERENCE_ROWS = (  # (statistic, title, digits, scale)
    ("oof_auroc:macro", "out-of-family AUROC (macro)", 3, 1.0),
    ("oof_accuracy", "out-of-family accuracy", 3, 1.0),
    ("cas", "CAS mean", 3, 1.0),
    ("tail:overall", "tail share (points)", 1, 100.0),
)


def differences_table(metrics: dict[str, Any], baseline: str) -> Table:
    """The paired differences run - baseline with their CIs and verdicts (win / loss / no difference)."""
    diff = metrics["baselines"][baseline]["differences"]
    level = int(round(100 * metrics.get("ci_level", 0.95)))
    table = Table(
        f"{metrics['model']} - {baseline}: paired differences ({level}% bootstrap CI)",
        ["statistic", "run", "baseline", "difference [CI]", "verdict"],
        note=("paired: the same label sets and initial noise" if diff["paired"] else "UNPAIRED")
        + ("; tail intervals include the thresholds' noise" if diff["threshold_noise"] else "")
        + "; a win is a difference whose CI excludes zero in the better direction",
    )
    for key, title, digits, scale in DIFFERENCE_ROWS:
        row = diff["metrics"].get(key)
        if row is None:
            continue
        table.rows.append(
            [
                title,
                num(scale * row["run"], digits),
                num(scale * row["baseline"], digits),
                with_ci(scale * row["difference"], [scale * c for c in row["ci"]], digits),
                row["verdict"],
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
        with_ci(oof["auroc"]["macro"], oof["auroc"].get("macro_ci")),
    ]
    if "accuracy" in oof:  # evaluations written before the accuracy column have none
        overall.append(with_ci(oof["accuracy"]["mean"], oof["accuracy"]["mean_ci"]))
    table.rows.append(overall)
    for label, block in oof["agreement_per_label"].items():
        row = [
            label,
            with_ci(block["mean"], block["mean_ci"]),
            with_ci(oof["auroc"]["per_label"].get(label), oof["auroc"].get("per_label_ci", {}).get(label)),
        ]
        table.rows.append(row + (["-"] if "accuracy" in oof else []))
    return table


def auroc_gaps(downstream: dict[str, Any], split: str) -> list[str]:
    """Why downstream AUROCs are missing ('-'): an AUROC needs at least one test image with the
    label and one without, so at least 2 test images; one line per reason, none when all exist."""
    n = downstream.get("n_test", 0)
    positives = downstream.get("test_positives")
    per_label = downstream.get("generated", {}).get("per_label", {})
    missing = [
        label for label, v in per_label.items() if v is None or (isinstance(v, float) and math.isnan(v))
    ]
    if not missing:
        return []
    need = "an AUROC needs at least one test image with the label and one without (at least 2 images)"
    if n < 2:
        return [f"no AUROC: the {split} split has {n} image(s) with these labels; {need}"]
    if positives is None:  # an evaluation written before the counts were kept
        return [f"no AUROC for {', '.join(missing)}: the {split} split has {n} images; {need}"]
    lines = []
    for label in missing:
        p = positives.get(label, 0)
        side = "none has it" if p == 0 else f"all {n} have it"
        lines.append(f"no AUROC for {label}: of the {n} {split} images {side}; {need}")
    return lines


def downstream_table(metrics: dict[str, Any]) -> Table:
    d = metrics["downstream"]
    table = Table(
        f"Downstream classification: AUROC on the real {metrics['split']} split ({d['n_test']} images)",
        ["label", f"trained on {d['n_generated']} generated", f"trained on {d['n_real']} real"],
        note="; ".join(auroc_gaps(d, metrics["split"])),
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
    for name, comp in metrics.get("baselines", {}).items():
        tables.append(
            differences_table(metrics, name) if "differences" in comp else reduction_table(metrics, name)
        )
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
