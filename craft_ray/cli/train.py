"""`craft train`: one experiment on Ray Train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from craft_ray.cli.common import ADDRESS_HELP, console, err_console


def train(
    config: Annotated[Path, typer.Option(help="experiment YAML, e.g. experiments/chexpert/craft.yaml")],
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (scaling.workers)")] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="GPUs per worker (scaling.gpus_per_worker)")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="run storage: a path or s3:// URI (storage.path)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="run name (storage.name; default: the experiment name)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="total optimiser steps (training.steps)")] = None,
    resume: Annotated[bool, typer.Option(help="continue an existing run from its latest checkpoint")] = False,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Train one experiment with Ray Train on the current Ray cluster (a local one if none)."""
    from craft_ray.config import load_config
    from craft_ray.train.trainer import run_training

    overrides = {
        "scaling.workers": workers,
        "scaling.gpus_per_worker": gpus_per_worker,
        "storage.path": storage,
        "storage.name": name,
        "training.steps": steps,
    }
    cfg = load_config(config, {k: v for k, v in overrides.items() if v is not None})
    total = cfg.training.steps
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
    ) as progress:
        task = progress.add_task(
            f"{cfg.method} on {cfg.dataset.name}", total=total, info="starting Ray Train"
        )

        def on_report(metrics: dict) -> None:
            shown = [
                f"{k}={metrics[k]:.4g}"
                for k in ("loss", "reward", "grad_norm")
                if isinstance(metrics.get(k), float)
            ]
            if metrics.get("skipped_steps"):
                shown.append(f"skipped={metrics['skipped_steps']:.0f}")
            progress.update(task, completed=metrics.get("step", 0), info=" ".join(shown))

        summary = run_training(
            cfg,
            resume=resume,
            on_report=on_report,
            address=address,
            say=lambda text: progress.console.print(escape(text), highlight=False, soft_wrap=True),
        )
    table = Table(
        title=escape(
            f"run {cfg.run_name} [{cfg.method}, {cfg.dataset.name}, {cfg.scaling.workers} worker(s)]"
        )
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("step", "loss", "reward", "denoise_loss", "grad_norm", "lr", "skipped_steps", "step_time_s"):
        if isinstance(summary.metrics.get(key), float):
            table.add_row(key, f"{summary.metrics[key]:.5g}")
    console.print(table)
    console.print(
        f"run directory: {summary.run_uri}\nfinal weights: {summary.final_uri}  (metrics: {summary.run_uri}/metrics.jsonl)"
    )
