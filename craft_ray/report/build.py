"""`craft report`: a markdown report with the paper's tables and PNG figures from evaluated runs.

The report is a list of sections; each section is a function (runs, figures dir) -> markdown that
may write figures. A `--sweep DIR` section (issue: sweeps) is one more function in `SECTIONS`.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from craft_ray.cas.score import DIMENSIONS
from craft_ray.data.images import decode_png
from craft_ray.data.reading import read_table
from craft_ray.errors import EvaluationError
from craft_ray.evaluation.grids import image_grid
from craft_ray.evaluation.metrics import tail_reduction
from craft_ray.evaluation.store import IMAGES, METRICS, PAIRS_PNG, SCORES, SETTINGS
from craft_ray.outputs import atomic_dir, check_output
from craft_ray.report import figures
from craft_ray.report.tables import (
    MEMORISATION_COLUMNS,
    Table,
    memorisation_cells,
    num,
    pct,
    to_markdown,
    with_ci,
)

REPORT_NAME = "report.md"
FIGURES = "figures"
BASELINE_METHODS = ("pretrained", "lora_sft", "full_sft", "ddpo")


@dataclass
class Evaluated:
    """One finished evaluation, as the report reads it."""

    directory: Path
    metrics: dict[str, Any]
    settings: dict[str, Any]
    scores: Any = field(repr=False)

    @property
    def name(self) -> str:
        return self.metrics["model"]

    @property
    def method(self) -> str:
        return self.settings.get("source", {}).get("method", "?")

    @property
    def dataset(self) -> str:
        return self.metrics["dataset"]


def find_evaluation(path: str | Path) -> Path:
    """A run directory (its eval/) or an evaluation directory."""
    path = Path(path)
    for candidate in (path, path / "eval"):
        if (candidate / METRICS).is_file() and (candidate / SCORES).is_file():
            return candidate
    raise EvaluationError(f"{path}: no finished evaluation (run `craft evaluate --run {path}` first)")


def load_evaluations(paths: list[str | Path]) -> list[Evaluated]:
    if not paths:
        raise EvaluationError("give at least one run with --runs")
    runs = []
    for path in paths:
        directory = find_evaluation(path)
        runs.append(
            Evaluated(
                directory,
                json.loads((directory / METRICS).read_text()),
                json.loads((directory / SETTINGS).read_text()),
                pq.read_table(directory / SCORES),
            )
        )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise EvaluationError(f"the same evaluation is given twice: {names}")
    return runs


def by_dataset(runs: list[Evaluated]) -> dict[str, list[Evaluated]]:
    groups: dict[str, list[Evaluated]] = {}
    for run in runs:
        groups.setdefault(run.dataset, []).append(run)
    return groups


# -- sections ---------------------------------------------------------------------------------


def overview_section(runs: list[Evaluated], fig_dir: Path) -> str:
    table = Table(
        "Evaluated runs", ["dataset", "model", "method", "images", "per label", "split", "evaluation"]
    )
    for r in runs:
        m = r.metrics
        table.rows.append(
            [
                r.dataset,
                r.name,
                r.method,
                str(m["images"]),
                str(m["n_per_label"]),
                m["split"],
                str(r.directory),
            ]
        )
    notes = sorted(
        {r.metrics["calibration"] for r in runs} | {r.metrics["out_of_family"]["classifier"] for r in runs}
    )
    return "## Runs\n\n" + to_markdown(table) + "\nReferences used:\n\n" + "".join(f"- {n}\n" for n in notes)


def cas_section(runs: list[Evaluated], fig_dir: Path) -> str:
    level = int(round(100 * runs[0].metrics.get("ci_level", 0.95)))
    table = Table(
        f"CAS per dataset and method (mean, {level}% bootstrap CI; dimensions: means)",
        ["dataset", "model", "method", "CAS", *DIMENSIONS],
    )
    parts = []
    for dataset, group in by_dataset(runs).items():
        for r in group:
            o = r.metrics["cas"]["overall"]
            table.rows.append(
                [
                    dataset,
                    r.name,
                    r.method,
                    with_ci(o["cas"]["mean"], o["cas"]["mean_ci"]),
                    *[num(o.get(d, {}).get("mean")) for d in DIMENSIONS],
                ]
            )
        labels = group[0].metrics["labels"]
        values = {r.name: {label: _cas_of(r, label) for label in labels} for r in group}
        name = f"cas_{dataset}.png"
        figures.cas_distribution(
            values,
            group[0].metrics["thresholds"],
            labels,
            fig_dir / name,
            f"CAS per label, {dataset}",
            group[0].metrics.get("threshold_q"),
        )
        parts.append(f"![CAS per label, {dataset}]({FIGURES}/{name})\n")
    return "## Clinical Alignment Score\n\n" + to_markdown(table) + "\n" + "\n".join(parts)


def _cas_of(run: Evaluated, label: str) -> list[float]:
    cas, sets = run.scores.column("cas").to_pylist(), run.scores.column("labels").to_pylist()
    return [c for c, s in zip(cas, sets, strict=True) if label in s]


def strongest_baseline(run: Evaluated, group: list[Evaluated]) -> Evaluated | None:
    """The baseline-method run of the same dataset (not `run`) with the lowest overall tail share."""
    candidates = [r for r in group if r is not run and r.method in BASELINE_METHODS]
    return min(candidates, key=lambda r: r.metrics["tail"]["overall"]["share"], default=None)


def tail_section(runs: list[Evaluated], fig_dir: Path) -> str:
    table = Table(
        "Low-alignment tail (share below the real-image threshold, Wilson CI) and its reduction vs the strongest baseline",
        ["dataset", "model", "method", "tail share", "strongest baseline", "reduction (points)", "relative"],
        note="reductions: percentile bootstrap, paired when both runs were evaluated on the same label sets and seeds",
    )
    parts = []
    for dataset, group in by_dataset(runs).items():
        for r in group:
            tail = r.metrics["tail"]["overall"]
            base = strongest_baseline(r, group)
            red = reduction(r, base)["overall"] if base else None
            table.rows.append(
                [
                    dataset,
                    r.name,
                    r.method,
                    pct(tail["share"], tail["ci"]),
                    base.name if base else "-",
                    with_ci(red["points"], red["points_ci"], 1) if red else "-",
                    (with_ci(red["relative_pct"], red["relative_pct_ci"], 1) + " %")
                    if red and not math.isnan(red["relative_pct"])
                    else "-",
                ]
            )
        groups = [*group[0].metrics["labels"], "overall"]
        shares = {
            r.name: {g: (row["share"], *row["ci"]) for g, row in r.metrics["tail"].items()} for r in group
        }
        name = f"tail_{dataset}.png"
        figures.tail_bars(
            shares,
            groups,
            fig_dir / name,
            f"Low-alignment tail, {dataset}",
            runs[0].metrics.get("ci_level", 0.95),
        )
        parts.append(f"![Low-alignment tail, {dataset}]({FIGURES}/{name})\n")
    return "## Low-alignment tail\n\n" + to_markdown(table) + "\n" + "\n".join(parts)


def reduction(run: Evaluated, base: Evaluated) -> dict[str, Any]:
    a, b = run.scores, base.scores
    paired = a.num_rows == b.num_rows and all(
        a.column(k).equals(b.column(k)) for k in ("image_id", "seed", "labels")
    )
    m = run.metrics
    n_boot = 1000
    return tail_reduction(
        (a.column("cas").to_pylist(), a.column("labels").to_pylist()),
        (b.column("cas").to_pylist(), b.column("labels").to_pylist()),
        m["thresholds"],
        m["labels"],
        paired,
        n_boot,
        m.get("ci_level", 0.95),
        m.get("seed", 0),
    )


def downstream_section(runs: list[Evaluated], fig_dir: Path) -> str:
    table = Table(
        "Downstream classification: AUROC on the real test split (CNN trained on generated vs as many real images)",
        ["dataset", "model", "method", "macro (generated)", "macro (real)", "per label (generated / real)"],
    )
    for r in runs:
        d = r.metrics["downstream"]
        per = ", ".join(
            f"{label} {num(d['generated']['per_label'][label], 2)}/{num(d['real']['per_label'][label], 2)}"
            for label in d["generated"]["per_label"]
        )
        table.rows.append(
            [r.dataset, r.name, r.method, num(d["generated"]["macro"]), num(d["real"]["macro"]), per]
        )
    return "## Downstream classification\n\n" + to_markdown(table)


def memorisation_section(runs: list[Evaluated], fig_dir: Path) -> str:
    table = Table(
        "Memorisation: nearest real training image of each generated image, and of each held-out real "
        "image (the rate a generator of new real-like images would get)",
        ["dataset", "model", "embedding", *MEMORISATION_COLUMNS],
    )
    for r in runs:
        m = r.metrics["memorisation"]
        table.rows.append([r.dataset, r.name, m["embedding"], *memorisation_cells(m)])
    grids = []
    for k, r in enumerate(runs):
        source = r.directory / r.metrics["memorisation"].get("grid", PAIRS_PNG)
        if source.is_file():
            name = f"memorisation_{k}.png"
            shutil.copyfile(source, fig_dir / name)
            grids.append(f"![most similar generated / real pairs, {r.name}]({FIGURES}/{name})\n")
    return "## Memorisation\n\n" + to_markdown(table) + "\n" + "\n".join(grids)


def audit_section(runs: list[Evaluated], fig_dir: Path) -> str:
    parts = ["## Checklist audit\n"]
    for dataset, group in by_dataset(runs).items():
        paths = {
            f"{'MLLM' if r.metrics['audit']['path'] == 'mllm' else 'VLM surrogate'} ({r.metrics['audit'].get('model', '')})"
            for r in group
        }
        table = Table(
            f"Checklist pass rate per item (P(met) > 0.5), {dataset}; answered by: {', '.join(sorted(paths))}",
            ["item", "question", *[r.name for r in group]],
        )
        items: dict[str, str] = {}
        for r in group:
            items.update({k: v["question"] for k, v in r.metrics["audit"]["items"].items()})
        for item, question in items.items():
            cells = []
            for r in group:
                row = r.metrics["audit"]["items"].get(item)
                cells.append(pct(row["pass_rate"]) + f" (n={row['n']})" if row else "-")
            table.rows.append([item, question, *cells])
        parts.append(to_markdown(table))
    return "\n".join(parts)


def samples_section(runs: list[Evaluated], fig_dir: Path, per_label: int = 1) -> str:
    parts = ["## Samples\n"]
    for dataset, group in by_dataset(runs).items():
        labels = group[0].metrics["labels"]
        images, captions = [], []
        for r in group:
            table = read_table(
                str(r.directory / IMAGES), "generated", columns=["image", "attributes", "labels"]
            )
            rows = table.to_pylist()
            for label in labels:
                row = next(
                    (x for x in rows if json.loads(x["attributes"]).get("target_label") == label), None
                )
                if row is None:
                    images.append(np.zeros((8, 8), np.uint8))
                    captions.append(f"{label}: none")
                    continue
                pixels = decode_png(row["image"])
                images.append(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
                seed = json.loads(row["attributes"]).get("seed")
                captions.append(f"{', '.join(row['labels'])}\nseed {seed}")
        name = f"samples_{dataset}.png"
        image_grid(
            images,
            captions,
            fig_dir / name,
            title=f"Samples per label (columns) and method (rows), {dataset}",
            cols=len(labels),
            row_labels=[f"{r.name} ({r.method})" for r in group],
        )
        parts.append(f"![samples, {dataset}]({FIGURES}/{name})\n")
    return "\n".join(parts)


Section = Callable[[list[Evaluated], Path], str]
SECTIONS: list[Section] = [
    overview_section,
    cas_section,
    tail_section,
    downstream_section,
    memorisation_section,
    audit_section,
    samples_section,
]


def build_report(
    runs: list[str | Path],
    out: str | Path,
    overwrite: bool = False,
    sections: list[Section] | None = None,
    sweep: str | Path | None = None,
) -> Path:
    """Write <out>/report.md and <out>/figures/*.png (all at once, replacing <out> only with overwrite).
    `sweep`: a `craft sweep` directory, whose section (best trials, reward-weight heatmaps) is added;
    with a sweep, runs may be empty."""
    from craft_ray.report.sweep import load_sweep, sweep_section

    check_output(out, overwrite, kind="dir")
    if sweep is not None:
        load_sweep(sweep)  # a clear error before any work
    evaluated = load_evaluations(list(runs)) if runs or sweep is None else []
    sections = list(sections or (SECTIONS if evaluated else []))
    if sweep is not None:
        sections.append(sweep_section(sweep))
    with atomic_dir(out) as tmp:
        fig_dir = tmp / FIGURES
        fig_dir.mkdir()
        body = [section(evaluated, fig_dir) for section in sections]
        datasets = sorted({r.dataset for r in evaluated})
        title = "# CRAFT evaluation report\n\n" + (", ".join(datasets) + "\n\n" if datasets else "")
        (tmp / REPORT_NAME).write_text(title + "\n".join(body))
    return Path(out) / REPORT_NAME
