"""`craft cas`: calibrate the Clinical Alignment Score on real images, score images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from craft_ray.cli.common import console, progress_bar
from craft_ray.errors import CraftError

app = typer.Typer(
    help="Clinical Alignment Score: calibrate on real images, score images.", no_args_is_help=True
)


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
    vlm: str | None,
    mllm: str | None,
    weights: str | None,
    labels: str | None,
    checklists: list[Path] | None,
):
    """The evaluator to calibrate: the experiment's (`--config`) or the defaults, with every option
    the user gave applied on top (an option is never silently ignored)."""
    import dataclasses

    from craft_ray.cas import EvaluatorSpec
    from craft_ray.data import read_manifest

    manifest = read_manifest(data)
    overlays = [str(c) for c in checklists or []]
    if config is not None:
        from craft_ray.config import load_config

        cfg = load_config(config).resolved()
        if cfg.dataset.name != manifest.dataset:
            raise CraftError(
                f"{config} is for dataset '{cfg.dataset.name}' but {data} holds '{manifest.dataset}'"
            )
        spec = EvaluatorSpec.from_config(cfg, checklists=overlays)
    else:
        spec = EvaluatorSpec(manifest.dataset, list(manifest.label_space), "tiny", checklists=overlays)
    overrides = {
        "vlm": vlm,
        "mllm": mllm,
        "weights": _parse_weights(weights) if weights else None,
        "labels": [x.strip() for x in labels.split(",")] if labels else None,
    }
    return dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})


@app.command("calibrate")
def cas_calibrate(
    data: Annotated[str, typer.Option(help="real-image dataset directory or URI")],
    out: Annotated[Path, typer.Option(help="calibration JSON to write (thresholds + reference)")],
    split: Annotated[str, typer.Option(help="held-out split of real images")] = "val",
    q: Annotated[float, typer.Option(help="threshold quantile of real-image CAS")] = 0.05,
    config: Annotated[
        Path | None,
        typer.Option(
            help="take VLM, MLLM, weights, labels and checklists from an experiment (options given override it)"
        ),
    ] = None,
    vlm: Annotated[
        str | None,
        typer.Option(help="CLIP-family scorer: tiny | small | path | open_clip:<name> (default: tiny)"),
    ] = None,
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


@app.command("score")
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
