"""`craft data`: convert public datasets, generate phantoms, summarise dataset directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console, print_manifest, print_rejects, progress_bar
from craft_ray.errors import CraftError

app = typer.Typer(
    help="Convert datasets, generate phantoms, inspect dataset directories.", no_args_is_help=True
)


@app.command("convert")
def data_convert(
    dataset: Annotated[str, typer.Option(help="chexpert | isic | fundus | histopath")],
    source: Annotated[Path, typer.Option(help="the dataset in its public on-disk layout")],
    out: Annotated[Path, typer.Option(help="output directory (must be empty or absent)")],
    size: Annotated[
        int | None,
        typer.Option(
            help="store SIZE x SIZE images (centre square, bicubic resize; default: each image at its own size)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the patient-level split")] = 0,
    splits: Annotated[str, typer.Option(help="split fractions")] = "train=0.8,val=0.1,test=0.1",
    uncertainty: Annotated[str, typer.Option(help="CheXpert -1 labels: ones | zeros | ignore")] = "ignore",
    frontal_only: Annotated[bool, typer.Option(help="CheXpert: keep frontal views only")] = False,
    pool_valid: Annotated[
        bool,
        typer.Option(help="CheXpert: pool valid.csv into the random splits (default: its own split 'valid')"),
    ] = False,
    threads: Annotated[int, typer.Option(min=1, help="decoding threads")] = 4,
    overwrite: Annotated[bool, typer.Option(help="replace an existing dataset in --out")] = False,
) -> None:
    """Convert a public dataset layout into canonical parquet shards + manifest."""
    from craft_ray.data.converters import ConvertOptions, convert
    from craft_ray.data.splits import parse_fractions
    from craft_ray.data.writer import check_dataset_output

    if uncertainty not in ("ones", "zeros", "ignore"):
        raise CraftError(f"--uncertainty must be ones, zeros or ignore, got {uncertainty!r}")
    if size is not None and size < 8:
        raise CraftError(f"--size must be at least 8, got {size}")
    if pool_valid and dataset != "chexpert":
        raise CraftError("--pool-valid applies to --dataset chexpert only")
    check_dataset_output(out, overwrite)
    options = ConvertOptions(
        fractions=parse_fractions(splits),
        seed=seed,
        size=size,
        uncertainty=uncertainty,  # type: ignore[arg-type]
        frontal_only=frontal_only,
        pool_valid=pool_valid,
        threads=threads,
    )
    with progress_bar(f"converting {dataset}") as update:
        manifest = convert(dataset, source, out, options, progress=update, overwrite=overwrite)
    print_manifest(manifest, out)
    print_rejects(out, 5)


@app.command("phantom")
def data_phantom(
    modality: Annotated[str, typer.Option(help="chest | derm | fundus | histo")],
    out: Annotated[Path, typer.Option(help="output directory (must be empty or absent)")],
    n: Annotated[int, typer.Option(min=1, help="number of images")] = 1000,
    size: Annotated[int, typer.Option(min=16, max=2048, help="image side in pixels")] = 64,
    seed: Annotated[int, typer.Option(help="seed: same seed, byte-identical output")] = 0,
    splits: Annotated[str, typer.Option(help="split fractions")] = "train=0.8,val=0.1,test=0.1",
    implausible: Annotated[
        float,
        typer.Option(
            help="share of images with one hallucination-like defect each (duplicated or missing "
            "structure, laterality error, colour, a half-drawn structure, another modality's texture)"
        ),
    ] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing dataset in --out")] = False,
) -> None:
    """Generate a phantom dataset with known, stored findings and per-checklist-item ground truth."""
    from craft_ray.data.phantoms import check_share, make_phantom_dataset
    from craft_ray.data.splits import parse_fractions

    check_share(implausible)
    fractions = parse_fractions(splits)
    with progress_bar(f"phantom {modality}") as update:
        manifest = make_phantom_dataset(
            modality,
            n,
            out,
            size,
            seed,
            fractions,
            progress=update,
            overwrite=overwrite,
            implausible=implausible,
        )
    print_manifest(manifest, out)
    if implausible:
        defects = manifest.options.get("defects", {})
        kinds = ", ".join(f"{k} {v}" for k, v in defects.items()) or "none drawn"
        console.print(
            f"{sum(defects.values())} implausible image(s), one defect each ({kinds}); "
            "attributes.implausible names the defect and the anatomy/realism items it violates",
            soft_wrap=True,
        )


@app.command("summary")
def data_summary(
    uri: Annotated[str, typer.Argument(help="dataset directory or URI")],
    rejects: Annotated[int, typer.Option(help="show this many reject reasons")] = 10,
) -> None:
    """Print a dataset's counts per split and label, and its first reject reasons."""
    from craft_ray.data import read_manifest

    manifest = read_manifest(uri)
    print_manifest(manifest, uri)
    if manifest.rejects:
        print_rejects(uri, rejects)
