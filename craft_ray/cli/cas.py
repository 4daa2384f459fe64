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
    role: str = "reward",
):
    """The evaluator to calibrate: the experiment's (`--config`: its reward's, or with `role`
    'evaluation' its evaluation's: `evaluation.vlm` and `evaluation.weights`) or the defaults, with
    every option the user gave applied on top (an option is never silently ignored)."""
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
        if role == "evaluation":
            from craft_ray.evaluation.references import evaluation_spec

            spec = dataclasses.replace(evaluation_spec(cfg), checklists=overlays)
        else:
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


def _check_split(uri: str, splits: list[str]) -> None:
    from craft_ray.data import read_manifest

    known = sorted(read_manifest(uri).counts)
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise CraftError(f"{uri} has no split(s) {unknown} (known: {', '.join(known)})")


@app.command("calibrate")
def cas_calibrate(
    data: Annotated[str, typer.Option(help="real-image dataset directory or URI")],
    out: Annotated[Path, typer.Option(help="calibration JSON to write (thresholds + reference)")],
    split: Annotated[str, typer.Option(help="held-out split of real images")] = "val",
    q: Annotated[float, typer.Option(help="threshold quantile of real-image CAS, in (0, 1)")] = 0.05,
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
    role: Annotated[
        str,
        typer.Option(
            help="with --config: calibrate the experiment's reward evaluator (model.vlm, reward.weights; "
            "reward.calibration) or its evaluation evaluator (evaluation.vlm, evaluation.weights; "
            "evaluation.calibration)"
        ),
    ] = "reward",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    limit: Annotated[int | None, typer.Option(min=1, help="use at most this many images")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Compute per-label real-image CAS thresholds and the realism reference."""
    from craft_ray.outputs import check_output

    if not 0.0 < q < 1.0:
        raise CraftError(f"--q must be in (0, 1), got {q}")
    if role not in ("reward", "evaluation"):
        raise CraftError(f"--role must be reward or evaluation, got {role!r}")
    if role == "evaluation" and config is None:
        raise CraftError("--role evaluation needs --config (the experiment whose evaluation is calibrated)")
    check_output(out, overwrite)  # before importing the models: a wrong --out fails at once
    from craft_ray.cas import calibrate

    _check_split(data, [split])
    spec = _evaluator_spec(data, config, vlm, mllm, weights, labels, checklists, role)
    with progress_bar("calibrating CAS") as update:
        calibration = calibrate(spec, data, split, q, batch_size, limit, progress=update)
    calibration.save(out)
    _print_calibration(calibration, data, split, q)
    console.print(f"wrote {out}", soft_wrap=True)


def _print_calibration(calibration, data: str, split: str, q: float) -> None:
    from craft_ray.cas.calibration import MIN_IMAGES_PER_LABEL

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
    for label, count in calibration.thin_labels().items():
        if count == 0:
            meaning = "it gets no threshold; `cas score` reports its images as having none"
        else:
            meaning = (
                f"its threshold is interpolated between its lowest real scores, not an estimate of the "
                f"{q:g}-quantile (use at least {MIN_IMAGES_PER_LABEL} images, and 1/q for a stable quantile)"
            )
        console.print(
            f"[yellow]warning: {label} rests on {count} real image(s): {meaning}",
            highlight=False,
            soft_wrap=True,
        )
    if calibration.skipped:
        console.print(f"[yellow]{calibration.skipped} image(s) had none of the labels and were skipped")


@app.command("score")
def cas_score(
    images: Annotated[
        str,
        typer.Option(
            help="dataset directory or URI, or a folder of PNG/JPEG files with labels.csv (file, labels)"
        ),
    ],
    thresholds: Annotated[Path, typer.Option(help="calibration JSON from `craft cas calibrate`")],
    out: Annotated[
        Path, typer.Option(help="per-image scores parquet to write (the tail report goes beside it)")
    ],
    split: Annotated[list[str] | None, typer.Option(help="split(s) to score (default: all)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    overwrite: Annotated[bool, typer.Option(help="replace --out and its .tail.json if they exist")] = False,
) -> None:
    """Score images with the calibrated evaluator; write per-image scores and the tail report."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from craft_ray.outputs import atomic_file, check_output, same_path

    tail_path = out.with_suffix(".tail.json")
    for path in (out, tail_path):  # before importing the models: a wrong --out fails at once
        if same_path(path, thresholds):
            raise CraftError(f"--out would overwrite the calibration {thresholds}; choose another --out")
        check_output(path, overwrite)

    from craft_ray.cas import Calibration, score_images, tail_report
    from craft_ray.cas.tail import image_threshold
    from craft_ray.data import read_manifest
    from craft_ray.data.folder import resolve_images

    calibration = Calibration.load(thresholds)
    images = resolve_images(images, calibration.evaluator.dataset)
    manifest = read_manifest(images)
    if manifest.dataset != calibration.evaluator.dataset:
        raise CraftError(
            f"{images} holds '{manifest.dataset}' but {thresholds} was calibrated for '{calibration.evaluator.dataset}'"
        )
    splits = split or sorted(manifest.counts)
    _check_split(images, splits)
    evaluator = calibration.evaluator_from_spec()
    with progress_bar("scoring CAS") as update:
        rows, skipped = score_images(evaluator, images, splits, batch_size, progress=update)
    for row in rows:
        row["threshold"] = image_threshold(row["labels"], calibration.thresholds)
        known = row["threshold"] is not None and row["cas"] == row["cas"]  # NaN != NaN
        row["below_threshold"] = bool(row["cas"] < row["threshold"]) if known else None
    report = tail_report([r["cas"] for r in rows], [r["labels"] for r in rows], calibration.thresholds)
    with atomic_file(out) as tmp_scores, atomic_file(tail_path) as tmp_tail:
        pq.write_table(pa.Table.from_pylist(rows), tmp_scores)
        tmp_tail.write_text(json.dumps([r.as_json() for r in report], indent=2, allow_nan=False) + "\n")
    _print_tail(report, images, calibration.q)
    if skipped:
        console.print(f"[yellow]{len(skipped)} image(s) had none of the calibrated labels and were skipped")
    console.print(f"wrote {out} and {tail_path}", soft_wrap=True)


def _print_tail(report, images: str, q: float) -> None:
    from craft_ray.cas.tail import CI_METHOD

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=escape(f"low-alignment tail of {images} (CAS below the real-image q={q} threshold)"))
    for col in ("group", "images", "below", "share", "95% CI", "NaN score", "no threshold"):
        table.add_column(col, justify="right")
    for r in report:
        ci = "-" if r.ci_low is None else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        table.add_row(
            r.group, str(r.n), str(r.below), fmt(r.share), ci, str(r.nan_scores), str(r.no_threshold)
        )
    table.caption = (
        f"images: those the share rests on (a finite score and a threshold); CI: {CI_METHOD}; images "
        "with a NaN score or no threshold for any label are counted in their columns, not in the share"
    )
    console.print(table)
    overall = report[-1]
    if overall.no_threshold or overall.nan_scores:
        console.print(
            f"[yellow]warning: {overall.no_threshold} image(s) have no threshold (none of their labels was "
            f"calibrated) and {overall.nan_scores} a NaN score; they are not in the shares",
            highlight=False,
            soft_wrap=True,
        )
