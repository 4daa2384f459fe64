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

ADDRESS_HELP = (
    "Ray cluster to join, e.g. ray://head:10001 or auto on a cluster node "
    "(default: RAY_ADDRESS, else a local cluster that ends with the command)"
)


def join_ray(address: str | None) -> None:
    """Connect to Ray (craft_ray.raycluster.ensure_ray) and say which cluster, on stderr."""
    from rich.markup import escape

    from craft_ray.raycluster import ensure_ray

    err_console.print(escape(ensure_ray(address)), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator:
    """Yields an update(done, total[, phase]) callback driving a rich progress bar (a phase is shown
    after the bar's description). The bar appears at the first update, so a command that fails
    before any work shows no empty bar."""
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
        extra = {"description": f"{description}: {what}"} if what else {}  # the phase, in its caller's bar
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
    options = manifest.options or {}
    converted = sum(counts.get("images", 0) for counts in manifest.counts.values())
    filtered = int(options.get("filtered") or 0)
    if manifest.origin != "phantom":
        console.print(
            f"{converted + filtered + manifest.rejects} input(s): {converted} stored, {filtered} filtered, "
            f"{manifest.rejects} rejected",
            highlight=False,
        )
    for why, n in (options.get("filtered_by") or {}).items():
        console.print(f"filtered: {n} image(s): {why}", highlight=False, soft_wrap=True)
    if options.get("uncertainty") and options.get("uncertain"):
        policy = {
            "ignore": "kept out of labels, listed in uncertain_labels",
            "ones": "counted as positive",
            "zeros": "counted as negative",
        }.get(options["uncertainty"], options["uncertainty"])
        notes = ", ".join(f"{why}: {n}" for why, n in options["uncertain"].items())
        console.print(
            f"uncertainty {options['uncertainty']} (-1 labels {policy}): {notes}",
            highlight=False,
            soft_wrap=True,
        )
    if manifest.rejects:
        console.print(
            f"[yellow]{manifest.rejects} input(s) rejected; reasons in {Path(out) / REJECTS_NAME}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("no inputs rejected")


def print_rejects(uri: str | Path, limit: int) -> None:
    """The first `limit` reject reasons of a local dataset directory."""
    import pyarrow.parquet as pq

    from craft_ray.data.schema import REJECTS_NAME

    path = Path(uri) / REJECTS_NAME
    if limit and path.is_file():
        for row in pq.read_table(path).slice(0, limit).to_pylist():
            console.print(f"  {row['source']}: {row['reason']}", highlight=False, soft_wrap=True)
