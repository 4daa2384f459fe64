"""What every command group shares: consoles, progress bars, dataset tables."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator:
    """Yields an update(done, total[, description]) callback driving a rich progress bar. The bar
    appears at the first update, so a command that fails before any work shows no empty bar."""
    state: dict = {}

    def update(done: int, total: int, what: str | None = None) -> None:
        if "progress" not in state:
            state["progress"] = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
            )
            state["progress"].start()
            state["task"] = state["progress"].add_task(description, total=total)
        extra = {"description": what} if what else {}
        state["progress"].update(state["task"], completed=done, total=total, **extra)

    try:
        yield update
    finally:
        if "progress" in state:
            state["progress"].stop()


def print_manifest(manifest, out: Path | str) -> None:
    from craft_ray.data.schema import REJECTS_NAME

    table = Table(title=f"{manifest.dataset} ({manifest.modality}, {manifest.origin}) -> {out}")
    table.add_column("label")
    splits = sorted(manifest.counts)
    for split in splits:
        table.add_column(split, justify="right")
    for key in ["images", "patients", *manifest.label_space]:
        table.add_row(key, *[str(manifest.counts[s].get(key, 0)) for s in splits])
    console.print(table)
    if manifest.rejects:
        console.print(f"[yellow]{manifest.rejects} input(s) rejected; reasons in {Path(out) / REJECTS_NAME}")
    else:
        console.print("no inputs rejected")
