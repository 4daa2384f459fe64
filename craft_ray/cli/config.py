"""`craft config`: check experiment configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console, err_console
from craft_ray.errors import ConfigError

app = typer.Typer(help="Check experiment configs.", no_args_is_help=True)


@app.command("validate")
def config_validate(files: Annotated[list[Path], typer.Argument(help="experiment YAML file(s)")]) -> None:
    """Check experiment YAMLs against the typed config: every file is checked and reported; exit
    status 2 if any is invalid."""
    from craft_ray.config import load_config

    invalid = 0
    for path in files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            invalid += 1
            err_console.print(f"[red]invalid[/red] {exc}", highlight=False, soft_wrap=True)
            continue
        console.print(
            f"[green]ok[/green] {path}: {cfg.name} ({cfg.dataset.name}, {cfg.method})", soft_wrap=True
        )
    if invalid:
        raise ConfigError(f"{invalid} of {len(files)} config file(s) invalid")
