"""The `craft` command line: one module per command group. Errors a user can fix print as one line
and exit with status 2."""

from __future__ import annotations

import sys

import typer

from craft_ray.cli import cas, config, data, demo, train
from craft_ray.cli.common import err_console
from craft_ray.errors import CraftError

app = typer.Typer(
    help="CRAFT: clinical reward-aligned fine-tuning of diffusion models, on Ray.", no_args_is_help=True
)
app.add_typer(data.app, name="data")
app.add_typer(config.app, name="config")
app.add_typer(cas.app, name="cas")
app.command("train")(train.train)
app.command("demo")(demo.demo)


def main() -> None:
    try:
        app()
    except CraftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
