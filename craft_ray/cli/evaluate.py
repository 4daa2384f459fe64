"""`craft evaluate`: generate, score and compare a run (and its baselines) with Ray Data."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table as RichTable

from craft_ray.cli.common import ADDRESS_HELP, console, err_console, progress_bar
from craft_ray.errors import CraftError


class CliReporter:
    def say(self, text: str) -> None:
        err_console.print(escape(text), highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[Callable[[int, int], None]]:
        with progress_bar(description) as update:
            yield update


def print_table(table) -> None:
    rich = RichTable(title=escape(table.title), title_justify="left", caption=escape(table.note) or None)
    for i, col in enumerate(table.columns):
        rich.add_column(escape(col), justify="left" if i == 0 else "right", overflow="fold")
    for row in table.rows:
        rich.add_row(*[escape(c) for c in row])
    console.print(rich)


def source_from_options(run: Path | None, checkpoint: int | None, method: str | None, config: Path | None):
    """A run directory (--run [--checkpoint]) or a config's base model (--method pretrained --config)."""
    from craft_ray.evaluation import open_run, pretrained_source

    if method is not None and method != "pretrained":
        raise CraftError(f"--method: only 'pretrained' is accepted (a config's base model), got {method!r}")
    if (run is None) == (method is None):
        raise CraftError("give either --run RUN_DIR or --method pretrained --config F")
    if method is not None:
        if config is None:
            raise CraftError("--method pretrained needs --config F (the experiment whose base model to use)")
        return pretrained_source(config)
    if config is not None:
        raise CraftError("--config goes with --method pretrained; a run directory carries its own config")
    return open_run(run, checkpoint)


def evaluate(
    run: Annotated[Path | None, typer.Option(help="run directory left by `craft train`")] = None,
    baseline: Annotated[
        list[Path] | None, typer.Option(help="baseline run directory to compare with (repeatable)")
    ] = None,
    n_per_label: Annotated[
        int | None, typer.Option(help="images per label (evaluation.n_per_label, default 32)")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="real split: label distribution and downstream test set (default test)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="label-set draws and image seeds (evaluation.seed)")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="comma-separated labels to evaluate (default: the run's labels)")
    ] = None,
    checkpoint: Annotated[
        int | None, typer.Option(help="evaluate checkpoint_NNNNNN instead of final/")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="'pretrained': evaluate the base model of --config")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="experiment YAML (with --method pretrained)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="evaluation directory (default RUN_DIR/eval; needed with --method)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace finished evaluations made with other settings")
    ] = False,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """Generate images per label with Ray Data, score them (CAS, out-of-family classifier) and
    write RUN_DIR/eval: scores.parquet, images/, metrics.json; compare with each --baseline."""
    from craft_ray.cli.preflight import check_calibrations
    from craft_ray.evaluation import EvalRequest, open_run
    from craft_ray.evaluation import evaluate as run_evaluation
    from craft_ray.raycluster import ensure_ray
    from craft_ray.report.tables import run_tables

    main = source_from_options(run, checkpoint, method, config)
    baselines = [open_run(b) for b in baseline or []]
    request = EvalRequest(
        n_per_label=n_per_label,
        split=split,
        seed=seed,
        labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        out=out,
        overwrite=overwrite,
    )
    check_calibrations(main.cfg, reward=False)  # evaluation.calibration: before Ray starts
    reporter = CliReporter()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our progress bars replace Ray Data's logs
    if address:
        reporter.say(ensure_ray(address))
    results = run_evaluation(main, baselines, request, reporter)
    for table in run_tables(results[0].metrics, audit_limit=12):
        print_table(table)
    for result in results:
        how = "reused" if result.reused else "written"
        console.print(
            f"{result.source.name}: {how} {result.directory} (scores.parquet, images/, metrics.json)"
        )
