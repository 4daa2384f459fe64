"""The `craft` command line. Errors a user can fix print as one line and exit with status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
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
cas_app = typer.Typer(
    help="Clinical Alignment Score: calibrate on real images, score images.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
app.add_typer(cas_app, name="cas")

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


def _parse_weights(text: str) -> dict[str, float]:
    from craft_ray.cas import DIMENSIONS

    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in DIMENSIONS:
            raise CraftError(f"--weights: expected name=value with names {DIMENSIONS}, got {part!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise CraftError(f"--weights: {value!r} is not a number") from None
    return weights


def _evaluator_spec(
    data: str,
    config: Path | None,
    vlm: str,
    mllm: str | None,
    weights: str | None,
    labels: str | None,
    checklists: list[Path] | None,
):
    from craft_ray.cas import EvaluatorSpec
    from craft_ray.data import read_manifest

    manifest = read_manifest(data)
    if config is not None:
        from craft_ray.config import load_config

        cfg = load_config(config)
        if cfg.dataset.name != manifest.dataset:
            raise CraftError(
                f"{config} is for dataset '{cfg.dataset.name}' but {data} holds '{manifest.dataset}'"
            )
        return EvaluatorSpec.from_config(cfg, checklists=[str(c) for c in checklists or []])
    label_list = [x.strip() for x in labels.split(",")] if labels else list(manifest.label_space)
    return EvaluatorSpec(
        manifest.dataset,
        label_list,
        vlm,
        mllm,
        None,
        _parse_weights(weights) if weights else EvaluatorSpec(manifest.dataset).weights,
        [str(c) for c in checklists or []],
    )


@cas_app.command("calibrate")
def cas_calibrate(
    data: Annotated[str, typer.Option(help="real-image dataset directory or URI")],
    out: Annotated[Path, typer.Option(help="calibration JSON to write (thresholds + reference)")],
    split: Annotated[str, typer.Option(help="held-out split of real images")] = "val",
    q: Annotated[float, typer.Option(help="threshold quantile of real-image CAS")] = 0.05,
    config: Annotated[
        Path | None, typer.Option(help="take VLM, MLLM, weights and labels from an experiment")
    ] = None,
    vlm: Annotated[
        str, typer.Option(help="CLIP-family scorer: tiny | small | path | open_clip:<name>")
    ] = "tiny",
    mllm: Annotated[
        str | None, typer.Option(help="VQA scorer for checklists: tiny | path | http URL")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="e.g. pathology=1,checklist=1,anatomy=1,realism=1")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="comma-separated label subset (default: all in the data)")
    ] = None,
    checklists: Annotated[
        list[Path] | None, typer.Option(help="extra checklist YAML layered on the static base")
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    limit: Annotated[int | None, typer.Option(help="use at most this many images")] = None,
) -> None:
    """Compute per-label real-image CAS thresholds and the realism reference."""
    from craft_ray.cas import calibrate

    spec = _evaluator_spec(data, config, vlm, mllm, weights, labels, checklists)
    with progress_bar("calibrating CAS") as update:
        calibration = calibrate(spec, data, split, q, batch_size, limit, progress=update)
    calibration.save(out)
    table = Table(title=escape(f"real-image CAS on {data} [{split}], q={q}"))
    for col in ("label", "images", "mean", f"threshold (q={q})"):
        table.add_column(col, justify="right")
    for label, count in calibration.counts.items():
        summary = calibration.distribution["per_label"].get(label)
        table.add_row(
            label,
            str(count),
            f"{summary['mean']:.4f}" if summary else "-",
            f"{calibration.thresholds[label]:.4f}" if label in calibration.thresholds else "-",
        )
    console.print(table)
    if calibration.skipped:
        console.print(f"[yellow]{calibration.skipped} image(s) had none of the labels and were skipped")
    console.print(f"wrote {out}")


@cas_app.command("score")
def cas_score(
    images: Annotated[str, typer.Option(help="dataset directory or URI of images to score")],
    thresholds: Annotated[Path, typer.Option(help="calibration JSON from `craft cas calibrate`")],
    out: Annotated[Path, typer.Option(help="per-image scores parquet to write")],
    split: Annotated[list[str] | None, typer.Option(help="split(s) to score (default: all)")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    n_boot: Annotated[int, typer.Option(help="bootstrap resamples for the tail CI")] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Score images with the calibrated evaluator; write per-image scores and the tail report."""
    import json
    from dataclasses import asdict

    import pyarrow as pa
    import pyarrow.parquet as pq

    from craft_ray.cas import Calibration, score_images, tail_report
    from craft_ray.cas.tail import image_threshold
    from craft_ray.data import read_manifest

    calibration = Calibration.load(thresholds)
    manifest = read_manifest(images)
    if manifest.dataset != calibration.evaluator.dataset:
        raise CraftError(
            f"{images} holds '{manifest.dataset}' but {thresholds} was calibrated for '{calibration.evaluator.dataset}'"
        )
    evaluator = calibration.evaluator_from_spec()
    splits = split or sorted(manifest.counts)
    with progress_bar("scoring CAS") as update:
        rows, skipped = score_images(evaluator, images, splits, batch_size, progress=update)
    for row in rows:
        row["threshold"] = image_threshold(row["labels"], calibration.thresholds)
        row["below_threshold"] = bool(row["cas"] < row["threshold"])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    report = tail_report(
        [r["cas"] for r in rows], [r["labels"] for r in rows], calibration.thresholds, n_boot, seed=seed
    )
    tail_path = out.with_suffix(".tail.json")
    tail_path.write_text(json.dumps([asdict(r) for r in report], indent=2) + "\n")
    table = Table(
        title=f"low-alignment tail of {images} (CAS below the real-image q={calibration.q} threshold)"
    )
    for col in ("group", "images", "below", "share", "95% CI"):
        table.add_column(col, justify="right")
    for r in report:
        table.add_row(r.group, str(r.n), str(r.below), f"{r.share:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]")
    console.print(table)
    if skipped:
        console.print(f"[yellow]{len(skipped)} image(s) had none of the calibrated labels and were skipped")
    console.print(f"wrote {out} and {tail_path}")


@app.command("train")
def train(
    config: Annotated[Path, typer.Option(help="experiment YAML, e.g. experiments/chexpert/craft.yaml")],
    workers: Annotated[int | None, typer.Option(help="Ray Train workers (scaling.workers)")] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="GPUs per worker (scaling.gpus_per_worker)")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="run storage: a path or s3:// URI (storage.path)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="run name (storage.name; default: the experiment name)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="total optimiser steps (training.steps)")] = None,
    resume: Annotated[bool, typer.Option(help="continue an existing run from its latest checkpoint")] = False,
) -> None:
    """Train one experiment with Ray Train on the current Ray cluster (a local one if none)."""
    from craft_ray.config import load_config
    from craft_ray.train.trainer import run_training

    overrides = {
        "scaling.workers": workers,
        "scaling.gpus_per_worker": gpus_per_worker,
        "storage.path": storage,
        "storage.name": name,
        "training.steps": steps,
    }
    cfg = load_config(config, {k: v for k, v in overrides.items() if v is not None})
    total = cfg.training.steps
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
    ) as progress:
        task = progress.add_task(
            f"{cfg.method} on {cfg.dataset.name}", total=total, info="starting Ray Train"
        )

        def on_report(metrics: dict) -> None:
            shown = [
                f"{k}={metrics[k]:.4g}"
                for k in ("loss", "reward", "grad_norm")
                if isinstance(metrics.get(k), float)
            ]
            if metrics.get("skipped_steps"):
                shown.append(f"skipped={metrics['skipped_steps']:.0f}")
            progress.update(task, completed=metrics.get("step", 0), info=" ".join(shown))

        summary = run_training(cfg, resume=resume, on_report=on_report)
    table = Table(
        title=escape(
            f"run {cfg.run_name} [{cfg.method}, {cfg.dataset.name}, {cfg.scaling.workers} worker(s)]"
        )
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("step", "loss", "reward", "denoise_loss", "grad_norm", "lr", "skipped_steps", "step_time_s"):
        if isinstance(summary.metrics.get(key), float):
            table.add_row(key, f"{summary.metrics[key]:.5g}")
    console.print(table)
    console.print(
        f"run directory: {summary.run_uri}\nfinal weights: {summary.final_uri}  (metrics: {summary.run_uri}/metrics.jsonl)"
    )


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="where the demo writes its data, calibration and runs")] = Path(
        "runs/demo"
    ),
    n: Annotated[int, typer.Option(help="phantom images per modality")] = 400,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 64,
    steps: Annotated[int, typer.Option(help="CRAFT training steps")] = 8,
    workers: Annotated[int, typer.Option(help="Ray Train workers")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The offline end-to-end demo: phantom data, CAS calibration, a short CRAFT run on Ray Train."""
    from craft_ray.demo import run_demo

    contexts: list = []

    def progress(description: str):
        bar = progress_bar(description)
        contexts.append(bar)
        return bar.__enter__()

    def close_bars() -> None:
        while contexts:
            contexts.pop().__exit__(None, None, None)

    def on_report(metrics: dict) -> None:
        close_bars()
        err_console.print(
            f"  step {metrics.get('step', 0):.0f}/{steps}: loss={metrics.get('loss', float('nan')):.4f} "
            f"reward={metrics.get('reward', float('nan')):.4f}"
        )

    result = run_demo(out, n, size, seed, steps, workers, progress=progress, on_report=on_report)
    close_bars()
    for modality, manifest in result.manifests.items():
        print_manifest(manifest, out / "data" / modality)
    cal = result.calibration
    console.print(
        f"CAS calibrated on {cal.distribution['overall']['n']} real chest images ({cal.split}): "
        f"mean {cal.distribution['overall']['mean']:.4f}; thresholds -> {result.calibration_path}"
    )
    m = result.training.metrics
    console.print(
        f"CRAFT: {m.get('step', 0):.0f} steps on {m.get('world_size', 0):.0f} Ray Train workers, "
        f"last reward {m.get('reward', float('nan')):.4f}; run {result.training.run_uri}; "
        f"LoRA (diffusers format) in {result.training.final_uri}/lora"
    )


def main() -> None:
    try:
        app()
    except CraftError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
