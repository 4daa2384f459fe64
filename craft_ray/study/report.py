"""The analysis as files a report can include: a markdown table, a PNG bar chart, parquet and JSON.

<out>/study.md           preference table, agreement, time per pair, flagged findings
<out>/preferences.png    preference rate (one vote per pair) with 95 % Wilson CIs, overall and per label
<out>/preferences.parquet  the preference table, one row per comparison x label
<out>/summary.json       everything above as data
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from craft_ray.outputs import atomic_dir, check_output
from craft_ray.study.analysis import StudyAnalysis

MARKDOWN, CHART, TABLE, SUMMARY = "study.md", "preferences.png", "preferences.parquet", "summary.json"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.0f}%"


def _p(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def preference_table(analysis: StudyAnalysis) -> str:
    lines = [
        "| first vs second | label | pairs | answers | first | second | none | first preferred (95% CI) | sign test p | no preference (95% CI) |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in analysis.preferences:
        lines.append(
            f"| {r['first']} vs {r['second']} | {r['label']} | {r['pairs']} | {r['answers']} | {r['first_preferred']} | "
            f"{r['second_preferred']} | {r['no_preference']} | {_pct(r['first_rate'])} "
            f"[{_pct(r['first_rate_low'])}, {_pct(r['first_rate_high'])}] | {_p(r['sign_test_p'])} | "
            f"{_pct(r['no_preference_rate'])} [{_pct(r['no_preference_low'])}, {_pct(r['no_preference_high'])}] |"
        )
    return "\n".join(lines)


def markdown(analysis: StudyAnalysis) -> str:
    m, agree, t = analysis.manifest, analysis.agreement, analysis.times
    kappa = (
        f"{agree['statistic']}: {agree['kappa']:.3f} ({agree['readers']} readers, {agree['pairs']} pairs answered by all)"
        if agree["kappa"] is not None
        else f"not computed ({agree['readers']} reader(s), {agree['pairs']} pairs answered by all)"
    )
    per_reader = ", ".join(f"{r}: {s:.1f} s" for r, s in t["per_reader_median_s"].items())
    flag_lines = [
        "| source | images shown | images with a finding ticked wrong | share | findings ticked |",
        "|---|---:|---:|---:|---:|",
    ]
    flag_lines += [
        f"| {f['source']} | {f['images_shown']} | {f['images_flagged']} | {_pct(f['flagged_rate'])} | {f['findings_flagged']} |"
        for f in analysis.flags
    ]
    return "\n".join(
        [
            f"## Reader study: {m.dataset}, {len(analysis.judgements)} answers from {len(analysis.readers)} reader(s)",
            "",
            f"{m.pairs} pairs ({m.n} label sets drawn from the {m.split} split, seed {m.seed}; {m.controls} real-image controls).",
            "Each pair counts once: its vote is what most of its readers answered (a tie is no preference);",
            "first / second / none count pairs. Preference among decisive pairs with a 95% Wilson interval; exact",
            "two-sided sign test against 50% (no-preference pairs left out); the no-preference rate is over all pairs.",
            "",
            preference_table(analysis),
            "",
            f"![Preference with 95% Wilson CIs]({CHART})",
            "",
            f"**Agreement**: {kappa}.",
            "",
            f"**Time per pair**: median {t['median_s']:.1f} s ({per_reader}).",
            "",
            "**Checklist findings ticked as visibly wrong**",
            "",
            *flag_lines,
            "",
        ]
    )


def bar_chart(analysis: StudyAnalysis, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = analysis.preferences[::-1]  # first row on top
    names = [f"{r['first']} vs {r['second']}\n{r['label']} ({r['pairs']} pairs)" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.0 + 0.55 * len(rows)), sharey=True, width_ratios=[3, 2])
    panels = (
        (
            "first_rate",
            "first_rate_low",
            "first_rate_high",
            "first preferred over second (decisive pairs)",
            "#2a7de1",
        ),
        (
            "no_preference_rate",
            "no_preference_low",
            "no_preference_high",
            "no preference (all pairs)",
            "#8a93a6",
        ),
    )
    for ax, (key, low, high, title, colour) in zip(axes, panels, strict=True):
        values = [0.0 if math.isnan(r[key]) else r[key] for r in rows]
        errors = [
            [0.0 if math.isnan(r[low]) else v - r[low] for r, v in zip(rows, values, strict=True)],
            [0.0 if math.isnan(r[high]) else r[high] - v for r, v in zip(rows, values, strict=True)],
        ]
        ax.barh(range(len(rows)), values, xerr=errors, color=colour, capsize=3)
        ax.set_xlim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(axis="x", alpha=0.3)
    axes[0].axvline(0.5, color="black", linestyle="--", linewidth=1)
    axes[0].set_yticks(range(len(rows)), names, fontsize=8)
    fig.suptitle(f"Reader study on {analysis.manifest.dataset}: preference with 95% Wilson CIs", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(analysis: StudyAnalysis) -> dict:
    def clean(x):
        return None if isinstance(x, float) and math.isnan(x) else x

    return {
        "dataset": analysis.manifest.dataset,
        "answers": len(analysis.judgements),
        "readers": analysis.readers,
        "preferences": [{k: clean(v) for k, v in r.items()} for r in analysis.preferences],
        "agreement": analysis.agreement,
        "times": analysis.times,
        "flags": analysis.flags,
    }


def write_report(analysis: StudyAnalysis, out: str | Path, overwrite: bool = False) -> Path:
    check_output(out, overwrite, kind="dir")
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        (tmp / MARKDOWN).write_text(markdown(analysis))
        bar_chart(analysis, tmp / CHART)
        pq.write_table(pa.Table.from_pylist(analysis.preferences), tmp / TABLE)
        (tmp / SUMMARY).write_text(json.dumps(summary(analysis), indent=2) + "\n")
    return Path(out)
