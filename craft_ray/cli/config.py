"""`craft config`: check experiment configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console

app = typer.Typer(help="Check experiment configs.", no_args_is_help=True)


@app.command("validate")
def config_validate(files: Annotated[list[Path], typer.Argument(help="experiment YAML file(s)")]) -> None:
    """Check experiment YAMLs (or sweep specs) against the typed config; exit status 2 on the first
    invalid one."""
    from craft_ray.config import load_config
    from craft_ray.tune.spec import is_sweep_spec

    for path in files:
        if is_sweep_spec(path):
            validate_sweep_spec(path)
            continue
        cfg = load_config(path)
        console.print(f"[green]ok[/green] {path}: {cfg.name} ({cfg.dataset.name}, {cfg.method})")


def validate_sweep_spec(path: Path) -> None:
    """A sweep spec: its fields, its placeholders, and every trial's experiment config (not the data)."""
    from craft_ray.tune.plan import plan_sweep
    from craft_ray.tune.spec import load_spec

    spec = load_spec(path)
    plan = plan_sweep(spec, path, "<sweep>", with_data=False)
    console.print(
        f"[green]ok[/green] {path}: sweep {spec.name}: {len(plan.trials)} trials "
        f"({len(spec.datasets)} datasets x {len(spec.methods)} methods)"
    )
