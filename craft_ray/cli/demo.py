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
    for base, counts in summary["wins"].items():
        shown = ", ".join(f"{k} {v}" for k, v in counts.items())
        console.print(f"{methods[0]} better than {base} in (seeds): {shown}")


def demo(
    out: Annotated[Path, typer.Option(help="demo directory: data, calibration, runs, reports")] = Path(
        "runs/demo"
    ),
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
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """CRAFT vs lora_sft vs the pretrained base on chest phantoms: train each on Ray Train (2
    workers) from the base of experiments/demo, evaluate (CAS, tail, out-of-family CNN), report, and print the
    table. Re-running continues where it stopped."""
    from craft_ray.cli.evaluate import CliReporter
    from craft_ray.demo import DEMO_EXPERIMENTS, DemoOptions, run_demo

    started = time.time()
    opts = DemoOptions(out, experiments or DEMO_EXPERIMENTS, n, overrides=parse_sets(set_ or []))
    seed_list = parse_seeds(seeds)
    results, summary = run_demo(opts, seed_list, CliReporter(), address=address)
    for result in results:
        console.print(f"seed {result.seed}: report {result.report}, numbers {result.summary}")
    what = (
        "mean ± sd over seeds " + ",".join(map(str, seed_list))
        if len(seed_list) > 1
        else f"seed {seed_list[0]}"
    )
    print_summary(
        summary, f"CRAFT vs baselines on {out} ({what}; tail share: below the real-image threshold)"
    )
    console.print(f"summary {out / 'summary.json'}; {time.time() - started:.0f} s")
