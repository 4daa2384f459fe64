"""`craft report`: markdown tables and PNG figures from evaluated runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console


def report(
    out: Annotated[Path, typer.Option(help="report directory to write (report.md, figures/)")],
    runs: Annotated[
        list[Path] | None, typer.Option(help="run directories (or evaluation directories); repeatable")
    ] = None,
    sweep: Annotated[
        Path | None, typer.Option(help="a craft sweep directory: best trials and reward-weight heatmaps")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Write the paper's tables (CAS with CIs, tail and its reduction vs the strongest baseline,
    downstream AUROC, memorisation, checklist audit) and figures for runs evaluated by `craft evaluate`;
    with --sweep, the sweep's best trial per dataset and its reward-weight heatmaps."""
    from craft_ray.report.build import build_report

    path = build_report(runs or [], out, overwrite, sweep=sweep)
    console.print(f"wrote {path} and {Path(out) / 'figures'}/")
