"""The `craft` command line: one module per command group. Errors a user can fix print as one line
and exit with status 2."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import typer

from craft_ray.cli import (
    cas,
    checklists,
    config,
    control,
    data,
    demo,
    evaluate,
    generate,
    pretrain,
    probe,
    prompts,
    query,
    report,
    study,
    sweep,
    train,
)
from craft_ray.cli.common import err_console
from craft_ray.errors import CraftError

app = typer.Typer(
    help="CRAFT: clinical reward-aligned fine-tuning of diffusion models, on Ray.", no_args_is_help=True
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"craft-ray {version('craft-ray')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """CRAFT: clinical reward-aligned fine-tuning of diffusion models, on Ray."""


app.add_typer(data.app, name="data")
app.add_typer(config.app, name="config")
cas.app.command("probe")(probe.cas_probe)
app.command("control")(control.control)
app.add_typer(cas.app, name="cas")
app.add_typer(study.app, name="study")
app.add_typer(checklists.app, name="checklists")
app.add_typer(prompts.app, name="prompts")
app.add_typer(query.app, name="query")
app.add_typer(pretrain.app, name="pretrain")
app.command("train")(train.train)
app.command("demo")(demo.demo)
app.command("generate")(generate.generate)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("sweep")(sweep.sweep)


def main() -> None:
    """Exit 2 with one line for errors the user can fix (CraftError); exit 1 with one line for
    internal failures, the traceback going to a log file (or where the exception says it went)."""
    try:
        app()  # typer reports a bad option value itself: exit 2, the message, no traceback
    except CraftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place internal failures become exit 1
        log = getattr(exc, "log_path", None) or write_traceback(exc)
        err_console.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc} (traceback in {log})",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


def write_traceback(exc: BaseException) -> Path:
    log_dir = Path(tempfile.gettempdir()) / "craft-ray-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"craft-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path
