"""`craft sweep`: a Ray Tune sweep of datasets x methods x a search space."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from craft_ray.cli.common import ADDRESS_HELP, console, err_console


def print_best(result) -> None:
    if not any(not best.per_method for best in result.best):
        return  # no trial has finished yet
    metric = next(c for c in result.table.column_names if c.startswith("final_"))
    table = Table(title=f"best trial per dataset ({metric.removeprefix('final_')})", title_justify="left")
    for col in ("dataset", "method", "trial", "value", "config"):
        table.add_column(col, overflow="fold")
    for best in result.best:
        if not best.per_method:
            table.add_row(best.dataset, best.method, best.trial, f"{best.value:.4f}", best.uri)
    console.print(table)


def sweep(
    spec: Annotated[Path, typer.Option(help="sweep spec YAML, e.g. experiments/sweeps/smoke.yaml")],
    storage: Annotated[
        str | None, typer.Option(help="where sweeps go (path or URI; default: the spec's storage)")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="require an existing sweep to continue (the same command continues one anyway)"),
    ] = False,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Run a sweep with Ray Tune: each trial trains its own run in rungs and is validated on the
    val split after each (ASHA stops the weak ones); writes SWEEP_DIR/results.parquet and
    SWEEP_DIR/best/<dataset>.yaml. Running the same command again continues an interrupted sweep
    and retries failed trials. Exit status: 0 all trials done, 1 some failed, 130 interrupted."""
    from craft_ray.tune import run_sweep

    def say(text: str) -> None:
        err_console.print(escape(text), highlight=False, soft_wrap=True)

    check_sweep(spec)  # the trials' named calibrations: before Ray starts
    result = run_sweep(spec, storage, resume, address, say=say, console=err_console)
    counts: dict[str, int] = {}
    for status in result.table.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    print_best(result)
    console.print(
        f"sweep directory: {result.sweep_uri}\nresults: {result.results_uri} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
    )
    failed = [r for r in result.table.to_pylist() if r["status"] == "error"]
    for row in failed:
        err_console.print(
            f"[red]trial {row['trial']} failed[/red]: {escape(row['error'] or '')}", soft_wrap=True
        )
    if failed and not result.unfinished:
        err_console.print(
            f"{len(failed)} trial(s) failed (tracebacks: {result.sweep_uri}/tune/<trial>/error.txt): "
            "run the same command again to retry them"
        )
        sys.exit(1)
    if result.unfinished:
        err_console.print(
            f"[yellow]{len(result.unfinished)} trial(s) unfinished[/yellow]: run the same command again to continue"
        )
        sys.exit(130)


def check_sweep(spec_path: Path) -> None:
    from craft_ray.cli.config import check_sweep_calibrations
    from craft_ray.tune.plan import plan_sweep
    from craft_ray.tune.spec import load_spec

    check_sweep_calibrations(plan_sweep(load_spec(spec_path), spec_path, "<sweep>", with_data=False))
