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
    """Check experiment YAMLs (or sweep specs) against the typed config, and the calibrations they
    name (reward.calibration, evaluation.calibration) against the config's dataset, VLM and labels:
    every file is checked and reported; exit status 2 if any is invalid."""
    from craft_ray.cli.preflight import check_calibrations
    from craft_ray.config import load_config
    from craft_ray.tune.spec import is_sweep_spec

    invalid = 0
    for path in files:
        try:
            if is_sweep_spec(path):
                validate_sweep_spec(path)
                continue
            cfg = load_config(path)
            try:  # a calibration made for another dataset, VLM or label set
                check_calibrations(cfg)
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        except ConfigError as exc:
            invalid += 1
            err_console.print(f"[red]invalid[/red] {exc}", highlight=False, soft_wrap=True)
            continue
        console.print(
            f"[green]ok[/green] {path}: {cfg.name} ({cfg.dataset.name}, {cfg.method})", soft_wrap=True
        )
    if invalid:
        raise ConfigError(f"{invalid} of {len(files)} config file(s) invalid")


def validate_sweep_spec(path: Path) -> None:
    """A sweep spec: its fields, its placeholders, and every trial's experiment config (not the data)."""
    from craft_ray.tune.plan import plan_sweep
    from craft_ray.tune.spec import load_spec

    spec = load_spec(path)
    plan = plan_sweep(spec, path, "<sweep>", with_data=False)
    check_sweep_calibrations(plan)
    console.print(
        f"[green]ok[/green] {path}: sweep {spec.name}: {len(plan.trials)} trials "
        f"({len(spec.datasets)} datasets x {len(spec.methods)} methods)",
        soft_wrap=True,
    )


def check_sweep_calibrations(plan) -> None:
    """Every trial's named calibrations (see `check_calibrations`), the trial named in the error."""
    from craft_ray.cli.preflight import check_calibrations

    checked: set[tuple] = set()
    for trial in plan.trials:
        key = (trial.cfg.reward.calibration, trial.cfg.evaluation.calibration, trial.cfg.method)
        key += (trial.cfg.model.vlm, tuple(trial.cfg.dataset.label_space))
        if key in checked:
            continue
        checked.add(key)
        try:
            check_calibrations(trial.cfg)
        except ConfigError as exc:
            raise ConfigError(f"trial {trial.name}: {exc}") from None
