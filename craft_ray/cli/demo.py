"""`craft demo`: the offline main job (CRAFT vs its baselines on phantoms, one or several seeds)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from craft_ray.cli.common import ADDRESS_HELP, console
from craft_ray.errors import ConfigError


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct comma-separated integers, got {text!r}")
    return seeds


def parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected KEY=VALUE (e.g. training.steps=50), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def print_summary(summary: dict, title: str) -> None:
    from craft_ray.demo.summary import table_rows

    per_seed = summary["per_seed"]
    methods = list(next(iter(per_seed.values())))
    source = summary["methods"] if len(per_seed) > 1 else next(iter(per_seed.values()))
    heading, rows = table_rows(source, methods)
    table = RichTable(title=escape(title), title_justify="left")
    for i, col in enumerate(heading):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[escape(c) for c in row])
    console.print(table)
    in_reward = [m for m, flag in summary.get("in_reward", {}).items() if flag]
    if in_reward:
        console.print(
            f"[yellow]CAS of {', '.join(in_reward)} is in-reward: computed by the model it was trained to "
            "maximise (set evaluation.vlm to an independent evaluator)",
            highlight=False,
        )
    print_differences(summary, methods[0])


def print_differences(summary: dict, main: str) -> None:
    """main - each baseline, paired (same label sets and noise), per seed and pooled over the seeds:
    difference [95% CI] and the verdict (win / loss / no difference)."""
    from craft_ray.demo.summary import DIFFERENCES

    seeds = list(summary["differences"])
    for base, pooled in summary.get("pooled", {}).items():
        table = RichTable(
            title=escape(f"{main} - {base}: paired difference [95% CI] (verdict)"), title_justify="left"
        )
        table.add_column("statistic")
        for seed in seeds:
            table.add_column(f"seed {seed}", justify="right")
        if len(seeds) > 1:
            table.add_column("pooled", justify="right")
        for key, title, _, scale in DIFFERENCES:
            cells = []
            for seed in seeds:
                row = summary["differences"][seed].get(base, {}).get(key)
                cells.append(_difference_cell(row, scale))
            if len(seeds) > 1:
                cells.append(_difference_cell(pooled.get(key), scale))
            table.add_row(escape(title), *[escape(c) for c in cells])
        console.print(table)
        shown = "; ".join(f"{k}: {v}" for k, v in summary["verdicts"].get(base, {}).items())
        console.print(f"seeds where the CI excludes zero: {shown}", highlight=False, soft_wrap=True)


def _difference_cell(row: dict | None, scale: float) -> str:
    if not row or row.get("difference") is None:
        return "-"
    lo, hi = (scale * c if c is not None else float("nan") for c in row["ci"])
    digits = 1 if scale != 1 else 3
    return f"{scale * row['difference']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] ({row['verdict']})"


def demo(
    out: Annotated[Path, typer.Option(help="demo directory: data, calibration, runs, reports")] = Path(
        "runs/demo"
    ),
    dataset: Annotated[
        str,
        typer.Option(
            help="chexpert | isic | fundus | histopath, several comma-separated, or all: with more than "
            "one, each in turn, then the table across them"
        ),
    ] = "chexpert",
    seeds: Annotated[
        str, typer.Option(help="comma-separated seeds of training and evaluation sampling, e.g. 0,1,2")
    ] = "0",
    experiments: Annotated[
        Path | None, typer.Option(help="directory of experiment YAMLs (default: experiments/demo)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key of every experiment, e.g. training.steps=50"),
    ] = None,
    n: Annotated[int, typer.Option(help="phantom images of the dataset (data seed 0)")] = 1000,
    implausible: Annotated[
        float,
        typer.Option(
            help="share of the training images with one hallucination-like defect each (as real data has artefacts)"
        ),
    ] = 0.2,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """CRAFT vs its baselines on phantoms of a dataset (or several, or all four): train each on Ray Train from the
    base of experiments/demo, evaluate (CAS by the independent evaluator, tail, out-of-family CNN,
    paired differences), report, and print the tables. Re-running continues where it stopped."""
    import dataclasses

    from craft_ray.cli.evaluate import CliReporter
    from craft_ray.demo import DEMO_EXPERIMENTS, DemoOptions, run_demo
    from craft_ray.demo.datasets import across_datasets, dataset_overrides, datasets_of

    started = time.time()
    directory = experiments or DEMO_EXPERIMENTS
    seed_list = parse_seeds(seeds)
    user_sets = parse_sets(set_ or [])
    names = datasets_of(directory, dataset)
    from craft_ray.data.phantoms import check_share

    check_share(implausible)
    base = DemoOptions(out, directory, n, implausible=implausible)
    runs = [
        dataclasses.replace(
            base, out=out / name, overrides={**dataset_overrides(directory, name), **user_sets}
        )
        for name in names
    ]
    if len(runs) > 1:  # every dataset's configs and shipped models checked before any of them starts
        from craft_ray.demo.experiments import DemoLayout, load_experiments
        from craft_ray.demo.run import check_shipped_models

        for opts in runs:
            for exp in load_experiments(opts.experiments, DemoLayout(opts.out), seed_list[0], opts.overrides):
                check_shipped_models(exp.cfg)
    summaries = {}
    for name, opts in zip(names, runs, strict=True):
        if len(runs) > 1:
            console.print(f"== dataset {name} ==")
        results, summary = run_demo(opts, seed_list, CliReporter(), address=address)
        summaries[name] = summary
        for result in results:
            console.print(f"seed {result.seed}: report {result.report}, numbers {result.summary}")
        what = (
            "mean ± sd over seeds " + ",".join(map(str, seed_list))
            if len(seed_list) > 1
            else f"seed {seed_list[0]}"
        )
        print_summary(
            summary,
            f"CRAFT vs baselines on {name}, {opts.out} ({what}; tail share: below the real-image threshold)",
        )
    if len(runs) > 1:
        import json

        from craft_ray.demo.summary import strict_json
        from craft_ray.outputs import write_text_atomic

        table = across_datasets(summaries)
        write_text_atomic(
            out / "summary.json", json.dumps(strict_json(table), indent=1, allow_nan=False) + "\n"
        )
        print_across(table)
        console.print(f"summary {out / 'summary.json'}; {time.time() - started:.0f} s")
    else:
        console.print(f"summary {runs[0].out / 'summary.json'}; {time.time() - started:.0f} s")


def print_across(table: dict) -> None:
    """The paper-style table: per dataset and method the headline numbers; per dataset the main
    method's tail reduction against the strongest baseline; the mean relative reduction."""
    from craft_ray.demo.summary import COLUMNS

    keys = [k for k, _, _ in COLUMNS if k in ("cas", "tail_share", "oof_auroc", "downstream_auroc")]
    rich = RichTable(title="CRAFT across datasets (means over seeds)", title_justify="left")
    for col in (
        "dataset",
        "method",
        *keys,
        "tail reduction vs strongest baseline (points, paired CI)",
        "relative",
    ):
        rich.add_column(escape(col), justify="left" if col in ("dataset", "method") else "right")
    for dataset, methods in table["rows"].items():
        red = table["tail_reduction"].get(dataset)
        for k, (method, row) in enumerate(methods.items()):
            cells = [f"{row.get(key, float('nan')):.3f}" for key in keys]
            extra = ["", ""]
            if k == 0 and red:
                lo, hi = red["points_ci"]
                extra = [
                    f"{red['points']:+.1f} [{lo:+.1f}, {hi:+.1f}] vs {red['baseline']} ({red['verdict']})",
                    f"{100 * red['relative']:.1f} %" if red.get("relative") is not None else "-",
                ]
            rich.add_row(escape(dataset), escape(method), *cells, *[escape(c) for c in extra])
    console.print(rich)
    mean = table.get("mean_relative_tail_reduction")
    console.print(
        f"mean relative tail reduction across {', '.join(table['rows'])}: "
        + (f"{100 * mean:.1f} %" if mean is not None else "-")
        + " (the paper reports 20.4 %)"
    )
