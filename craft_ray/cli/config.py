"""`craft config`: check experiment configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console

app = typer.Typer(help="Check experiment configs.", no_args_is_help=True)


@app.command("validate")
def config_validate(files: Annotated[list[Path], typer.Argument(help="experiment YAML file(s)")]) -> None:
    """Check experiment YAMLs against the typed config; exit status 2 on the first invalid one."""
    from craft_ray.config import load_config

    for path in files:
        cfg = load_config(path)
        console.print(f"[green]ok[/green] {path}: {cfg.name} ({cfg.dataset.name}, {cfg.method})")
