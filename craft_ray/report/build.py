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
from craft_ray.evaluation.store import CALIBRATION, IMAGES, METRICS, PAIRS_PNG, SCORES, SETTINGS
from craft_ray.outputs import atomic_dir, check_output
from craft_ray.report import figures
from craft_ray.report.tables import (
    MEMORISATION_COLUMNS,
    Table,
    auroc_gaps,
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
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # by baseline name

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


def _evaluator_cell(run: Evaluated) -> str:
    flag = run.metrics.get("in_reward", {})
    return run.metrics["evaluator"]["vlm"] + (" **in-reward**" if flag.get("cas") else "")


def cas_section(runs: list[Evaluated], fig_dir: Path) -> str:
    level = int(round(100 * runs[0].metrics.get("ci_level", 0.95)))
    table = Table(
        f"CAS per dataset and method (mean, {level}% bootstrap CI; dimensions: means)",
        ["dataset", "model", "method", "evaluator", "CAS", *DIMENSIONS],
    )
    parts = []
    hacked = [r.name for r in runs if r.metrics.get("in_reward", {}).get("cas")]
    if hacked:
        parts.append(
            f"CAS marked in-reward ({', '.join(hacked)}) is computed by the model that run was trained to "
            "maximise: it can be hacked and is not a measurement; the out-of-family section is the check.\n"
        )
    for dataset, group in by_dataset(runs).items():
        for r in group:
            o = r.metrics["cas"]["overall"]
            table.rows.append(
                [
                    dataset,
                    r.name,
                    r.method,
                    _evaluator_cell(r),
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


# statistic -> how the strongest baseline is chosen: its value in metrics.json, better = +1 / -1
STRONGEST = {
    "tail": (lambda m: m["tail"]["overall"]["share"], -1),
    "cas": (lambda m: m["cas"]["overall"]["cas"]["mean"], 1),
    "oof": (lambda m: m["out_of_family"]["auroc"]["macro"], 1),
}


def strongest_baseline(run: Evaluated, group: list[Evaluated], by: str = "tail") -> Evaluated | None:
    """The baseline-method run of the same dataset (not `run`) that is best on `by`: the lowest
    overall tail share, the highest CAS or the highest out-of-family macro AUROC."""
    value, better = STRONGEST[by]
    candidates = [r for r in group if r is not run and r.method in BASELINE_METHODS]
    candidates = [r for r in candidates if not math.isnan(value(r.metrics))]
    return max(candidates, key=lambda r: better * value(r.metrics), default=None)


def comparison(run: Evaluated, base: Evaluated) -> dict[str, Any]:
    """run - base, paired where the runs share their image requests; thresholds redrawn from the real
    calibration images when the evaluation kept them (see craft_ray.evaluation.paired)."""
    from craft_ray.cas.calibration import Calibration
    from craft_ray.evaluation.paired import RunScores, paired_comparison
    from craft_ray.evaluation.run_metrics import oof_spec, real_scores

    if base.name not in run.comparisons:
        m = run.metrics
        path = run.directory / CALIBRATION
        real = real_scores(Calibration.load(path)) if path.is_file() else None
        run.comparisons[base.name] = paired_comparison(
            RunScores.from_table(run.scores),
            RunScores.from_table(base.scores),
            m["labels"],
            m["thresholds"],
            real,
            oof_spec(m),
            m.get("n_boot", N_BOOT),  # the evaluation's own: the report's CIs are the demo's and metrics'
            m.get("ci_level", 0.95),
            m.get("seed", 0),
        )
    return run.comparisons[base.name]


N_BOOT = 1000


def _verdict_cell(row: dict[str, Any], scale: float, digits: int) -> str:
    return with_ci(scale * row["difference"], [scale * c for c in row["ci"]], digits) + f" ({row['verdict']})"


def tail_section(runs: list[Evaluated], fig_dir: Path) -> str:
    method = next(iter(runs[0].metrics["tail"].values()), {}).get("ci_method", "Wilson score interval")
    table = Table(
        "Low-alignment tail (share below the real-image threshold) and its reduction vs the strongest baseline",
        ["dataset", "model", "method", "tail share", "strongest baseline", "reduction (points)", "relative"],
        note=f"shares: {method}; reductions: percentile bootstrap, paired when both runs were evaluated on the "
        "same label sets and seeds, with the thresholds redrawn from the real calibration images",
    )
    parts = []
    for dataset, group in by_dataset(runs).items():
        for r in group:
            tail = r.metrics["tail"]["overall"]
            base = strongest_baseline(r, group, "tail")
            red = comparison(r, base)["metrics"]["tail:overall"] if base else None
            table.rows.append(
                [
                    dataset,
                    r.name,
                    r.method,
                    pct(tail["share"], tail["ci"]),
                    base.name if base else "-",
                    _verdict_cell(
                        {**red, "difference": -red["difference"], "ci": [-red["ci"][1], -red["ci"][0]]},
                        100,
                        1,
                    )
                    if red
                    else "-",
                    (
                        with_ci(
                            100 * red["relative_reduction"],
                            [100 * c for c in red["relative_reduction_ci"]],
                            1,
                        )
                        + " %"
                    )
                    if red and not math.isnan(red["relative_reduction"])
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


def out_of_family_section(runs: list[Evaluated], fig_dir: Path) -> str:
    """The ground truth: does a classifier of another family, trained on its own data, read the
    conditioned findings in the generated images? Per run, and paired against the strongest baseline."""
    level = int(round(100 * runs[0].metrics.get("ci_level", 0.95)))
    parts = ["## Out-of-family evaluator (ground truth)\n"]
    for dataset, group in by_dataset(runs).items():
        labels = group[0].metrics["labels"]
        table = Table(
            f"{dataset}: the out-of-family classifier's AUROC on the conditioned labels ({level}% bootstrap CI) "
            "and its accuracy",
            ["model", "method", "macro AUROC", *labels, "accuracy"],
            note=f"classifier: {group[0].metrics['out_of_family']['classifier']}; accuracy: "
            + group[0].metrics["out_of_family"].get("accuracy", {}).get("kind", "-"),
        )
        for r in group:
            auroc, oof = r.metrics["out_of_family"]["auroc"], r.metrics["out_of_family"]
            acc = oof.get("accuracy", {})
            table.rows.append(
                [
                    r.name,
                    r.method,
                    with_ci(auroc["macro"], auroc.get("macro_ci")),
                    *[num(auroc["per_label"].get(label)) for label in labels],
                    with_ci(acc.get("mean"), acc.get("mean_ci")),
                ]
            )
        parts.append(to_markdown(table))
        parts.append(paired_table(dataset, group, level))
    return "\n".join(parts)


PAIRED_ROWS = (  # (statistic, column title, scale, digits, strongest baseline chosen by)
    ("oof_auroc:macro", "Δ OOF AUROC", 1.0, 3, "oof"),
    ("oof_accuracy", "Δ OOF accuracy", 1.0, 3, "oof"),
    ("cas", "Δ CAS", 1.0, 3, "cas"),
    ("tail:overall", "Δ tail share (points)", 100.0, 1, "tail"),
)


def paired_table(dataset: str, group: list[Evaluated], level: int) -> str:
    """Every run against the strongest baseline of each statistic: the paired difference, its CI and
    the verdict (a win is a CI that excludes zero in the better direction, never a count of seeds)."""
    table = Table(
        f"{dataset}: paired differences (run - strongest baseline, {level}% bootstrap CI)",
        ["model", "method", *[title for _, title, *_ in PAIRED_ROWS]],
        note="paired: the same label sets and initial noise, images resampled together; tail: thresholds "
        "redrawn from the real calibration images; baseline per column: the best baseline-method run on it",
    )
    for r in group:
        cells = []
        for key, _, scale, digits, by in PAIRED_ROWS:
            base = strongest_baseline(r, group, by)
            row = comparison(r, base)["metrics"].get(key) if base else None
            cells.append(f"{_verdict_cell(row, scale, digits)} vs {base.name}" if row else "-")
        table.rows.append([r.name, r.method, *cells])
    return to_markdown(table)


def downstream_section(runs: list[Evaluated], fig_dir: Path) -> str:
    table = Table(
        "Downstream classification: AUROC on the real test split (CNN trained on generated vs as many real images)",
        ["dataset", "model", "method", "macro (generated)", "macro (real)", "per label (generated / real)"],
    )
    gaps: list[str] = []
    for r in runs:
        d = r.metrics["downstream"]
        per = ", ".join(
            f"{label} {num(d['generated']['per_label'][label], 2)}/{num(d['real']['per_label'][label], 2)}"
            for label in d["generated"]["per_label"]
        )
        table.rows.append(
            [r.dataset, r.name, r.method, num(d["generated"]["macro"]), num(d["real"]["macro"]), per]
        )
        gaps.extend(f"{r.name}: {line}" for line in auroc_gaps(d, r.metrics["split"]))
    table.note = "; ".join(gaps)  # why a cell is '-'
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
    out_of_family_section,
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
