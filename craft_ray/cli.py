"""The `craft` command line. Errors a user can fix print as one line and exit with status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from craft_ray.errors import CraftError

app = typer.Typer(
    help="CRAFT: clinical reward-aligned fine-tuning of diffusion models, on Ray.", no_args_is_help=True
)
data_app = typer.Typer(
    help="Convert datasets, generate phantoms, inspect dataset directories.", no_args_is_help=True
)
config_app = typer.Typer(help="Check experiment configs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator:
    """Yields a (done, total) callback that drives a rich progress bar."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


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


@data_app.command("convert")
def data_convert(
    dataset: Annotated[str, typer.Option(help="chexpert | isic | fundus | histopath")],
    source: Annotated[Path, typer.Option(help="the dataset in its public on-disk layout")],
    out: Annotated[Path, typer.Option(help="output directory (must be empty or absent)")],
    size: Annotated[
        int | None, typer.Option(help="resize to SIZE x SIZE (shorter side, centre crop)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the patient-level split")] = 0,
    splits: Annotated[str, typer.Option(help="split fractions")] = "train=0.8,val=0.1,test=0.1",
    uncertainty: Annotated[str, typer.Option(help="CheXpert -1 labels: ones | zeros | ignore")] = "ignore",
    frontal_only: Annotated[bool, typer.Option(help="CheXpert: keep frontal views only")] = False,
    threads: Annotated[int, typer.Option(help="decoding threads")] = 4,
) -> None:
    """Convert a public dataset layout into canonical parquet shards + manifest."""
    from craft_ray.data.converters import ConvertOptions, convert
    from craft_ray.data.splits import parse_fractions

    if uncertainty not in ("ones", "zeros", "ignore"):
        raise CraftError(f"--uncertainty must be ones, zeros or ignore, got {uncertainty!r}")
    if size is not None and size < 8:
        raise CraftError(f"--size must be at least 8, got {size}")
    options = ConvertOptions(
        fractions=parse_fractions(splits),
        seed=seed,
        size=size,
        uncertainty=uncertainty,  # type: ignore[arg-type]
        frontal_only=frontal_only,
        threads=threads,
    )
    with progress_bar(f"converting {dataset}") as update:
        manifest = convert(dataset, source, out, options, progress=update)
    print_manifest(manifest, out)


@data_app.command("phantom")
def data_phantom(
    modality: Annotated[str, typer.Option(help="chest | derm | fundus | histo")],
    out: Annotated[Path, typer.Option(help="output directory (must be empty or absent)")],
    n: Annotated[int, typer.Option(help="number of images")] = 1000,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 64,
    seed: Annotated[int, typer.Option(help="seed: same seed, byte-identical output")] = 0,
    splits: Annotated[str, typer.Option(help="split fractions")] = "train=0.8,val=0.1,test=0.1",
) -> None:
    """Generate a phantom dataset with known, stored findings."""
    from craft_ray.data.phantoms import make_phantom_dataset
    from craft_ray.data.splits import parse_fractions

    with progress_bar(f"phantom {modality}") as update:
        manifest = make_phantom_dataset(
            modality, n, out, size, seed, parse_fractions(splits), progress=update
        )
    print_manifest(manifest, out)


@data_app.command("summary")
def data_summary(
    uri: Annotated[str, typer.Argument(help="dataset directory or URI")],
    rejects: Annotated[int, typer.Option(help="show this many reject reasons")] = 10,
) -> None:
    """Print a dataset's counts per split and label, and its first reject reasons."""
    import pyarrow.parquet as pq

    from craft_ray.data import read_manifest
    from craft_ray.data.schema import REJECTS_NAME

    manifest = read_manifest(uri)
    print_manifest(manifest, uri)
    rejects_path = Path(uri) / REJECTS_NAME
    if manifest.rejects and rejects_path.exists() and rejects:
        for row in pq.read_table(rejects_path).slice(0, rejects).to_pylist():
            console.print(f"  {row['source']}: {row['reason']}")


@config_app.command("validate")
def config_validate(files: Annotated[list[Path], typer.Argument(help="experiment YAML file(s)")]) -> None:
    """Check experiment YAMLs against the typed config; exit status 2 on the first invalid one."""
    from craft_ray.config import load_config

    for path in files:
        cfg = load_config(path)
        console.print(f"[green]ok[/green] {path}: {cfg.name} ({cfg.dataset.name}, {cfg.method})")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="where the demo writes its data and runs")] = Path("runs/demo"),
    n: Annotated[int, typer.Option(help="phantom images per modality")] = 400,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The offline end-to-end demo: phantom data for the four modalities, then a summary."""
    from craft_ray.data.phantoms import GENERATORS, make_phantom_dataset
    from craft_ray.data.schema import MANIFEST_NAME

    for modality in GENERATORS:
        target = out / "data" / modality
        if (target / MANIFEST_NAME).exists():
            console.print(f"{target} exists; reusing it")
            from craft_ray.data import read_manifest

            print_manifest(read_manifest(str(target)), target)
            continue
        with progress_bar(f"phantom {modality}") as update:
            manifest = make_phantom_dataset(modality, n, target, size, seed, progress=update)
        print_manifest(manifest, target)


def main() -> None:
    try:
        app()
    except CraftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
