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
        typer.Option(
            help="CLIP-family scorer: tiny | small | phantom (shipped, the dataset's modality) | "
            "phantom:<modality> | path | hub id | open_clip:<name> (default: tiny)"
        ),
    ] = None,
    mllm: Annotated[
        str | None,
        typer.Option(
            help="VQA scorer for checklists: tiny | path | hub id | http(s) URL of an OpenAI-style server"
        ),
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
        from craft_ray.cas.calibration import NOT_SCORED

        reasons = ", ".join(f"{n} {NOT_SCORED.get(k, k)}" for k, n in calibration.skipped_reasons.items())
        console.print(
            f"[yellow]{calibration.skipped} image(s) not used: {reasons or 'none of the labels'}",
            highlight=False,
            soft_wrap=True,
        )


def tail_path_for(out: Path) -> Path:
    """Where `score` writes the tail report: --out with .tail.json in place of its suffix
    (scores.parquet -> scores.tail.json)."""
    return out.with_suffix(".tail.json")


SCORE_SCHEMA_FIELDS = [
    ("image_id", "string"),
    ("split", "string"),
    ("labels", "list"),
    ("status", "string"),
    ("reason", "string"),
    ("cas", "float64"),
    ("pathology", "float64"),
    ("checklist", "float64"),
    ("anatomy", "float64"),
    ("realism", "float64"),
    ("threshold", "float64"),
    ("below_threshold", "bool"),
]


def _score_table(rows: list[dict]):
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "list": pa.list_(pa.string()),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in SCORE_SCHEMA_FIELDS])
    return pa.Table.from_pylist([{k: row.get(k) for k in schema.names} for row in rows], schema=schema)


def _folder_rejects(uri: str):
    """The rows of an --images folder that could not be read, as NotScored entries."""
    import pyarrow.parquet as pq

    from craft_ray.cas.calibration import NotScored
    from craft_ray.data.folder import FOLDER_SPLIT
    from craft_ray.data.schema import REJECTS_NAME

    rejects = pq.read_table(Path(uri) / REJECTS_NAME).to_pylist()
    return [NotScored(r["source"], FOLDER_SPLIT, [], [], "rejected", r["reason"]) for r in rejects]


@app.command("score")
def cas_score(
    images: Annotated[
        str,
        typer.Option(
            help="dataset directory or URI, or a folder of PNG/JPEG/TIFF files with labels.csv (file, labels)"
        ),
    ],
    thresholds: Annotated[Path, typer.Option(help="calibration JSON from `craft cas calibrate`")],
    out: Annotated[
        Path,
        typer.Option(
            help="per-image scores parquet to write; the tail report goes beside it as <name>.tail.json "
            "(scores.parquet -> scores.tail.json)"
        ),
    ],
    split: Annotated[list[str] | None, typer.Option(help="split(s) to score (default: all)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    overwrite: Annotated[bool, typer.Option(help="replace --out and its .tail.json if they exist")] = False,
) -> None:
    """Score images with the calibrated evaluator; write per-image scores and the tail report.
    Every input image is a row of the scores: scored, or with the reason it could not be."""
    import json
    from collections import Counter

    from craft_ray.outputs import atomic_file, check_output, same_path

    tail_path = tail_path_for(out)
    for path in (out, tail_path):  # before importing the models: a wrong --out fails at once
        if same_path(path, thresholds):
            raise CraftError(f"--out would overwrite the calibration {thresholds}; choose another --out")
        check_output(path, overwrite)

    import pyarrow.parquet as pq

    from craft_ray.cas import Calibration, score_images, tail_report
    from craft_ray.cas.calibration import NOT_SCORED
    from craft_ray.cas.tail import image_threshold, tail_document
    from craft_ray.data import read_manifest
    from craft_ray.data.folder import resolve_images

    calibration = Calibration.load(thresholds)
    uri, from_folder = resolve_images(images, calibration.evaluator.dataset)
    manifest = read_manifest(uri)
    if manifest.dataset != calibration.evaluator.dataset:
        raise CraftError(
            f"{images} holds '{manifest.dataset}' but {thresholds} was calibrated for '{calibration.evaluator.dataset}'"
        )
    splits = split or sorted(manifest.counts)
    _check_split(uri, splits)
    rejected = _folder_rejects(uri) if from_folder else []
    evaluator = calibration.evaluator_from_spec()
    with progress_bar("scoring CAS") as update:
        rows, not_scored = (
            score_images(evaluator, uri, splits, batch_size, progress=update) if splits else ([], [])
        )
    not_scored = [*rejected, *not_scored]
    if not rows:
        reasons = Counter(n.status for n in not_scored)
        first = f"; first: {not_scored[0].image_id}: {not_scored[0].reason}" if not_scored else ""
        raise CraftError(
            f"no image of {images} could be scored ("
            + ", ".join(f"{n} {NOT_SCORED[k]}" for k, n in reasons.items())
            + f"){first}"
        )
    for row in rows:
        row["status"] = "scored"
        row["threshold"] = image_threshold(row["labels"], calibration.thresholds)
        known = row["threshold"] is not None and row["cas"] == row["cas"]  # NaN != NaN
        row["below_threshold"] = bool(row["cas"] < row["threshold"]) if known else None
    report = tail_report([r["cas"] for r in rows], [r["labels"] for r in rows], calibration.thresholds)
    counts = Counter(n.status for n in not_scored)
    document = tail_document(report, len(rows) + len(not_scored), counts)
    table = _score_table([*rows, *(vars(n) for n in not_scored)])
    with atomic_file(out) as tmp_scores, atomic_file(tail_path) as tmp_tail:
        pq.write_table(table, tmp_scores)
        tmp_tail.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    _print_tail(report, images, calibration.q)
    _print_totals(document, not_scored, splits, manifest, from_folder, uri)
    console.print(f"wrote {out} and {tail_path}", soft_wrap=True)


def _print_totals(
    document: dict, not_scored, splits: list[str], manifest, from_folder: bool, uri: str
) -> None:
    from craft_ray.cas.calibration import NOT_SCORED

    given = "images in the folder's labels.csv" if from_folder else f"images in split(s) {', '.join(splits)}"
    console.print(
        f"{document['images']} {given}: {document['scored']} scored ({document['in_shares']} in the shares, "
        f"{document['nan_scores']} NaN, {document['no_threshold']} without a threshold), "
        f"{document['images'] - document['scored']} not scored",
        highlight=False,
        soft_wrap=True,
    )
    for status, n in document["not_scored"].items():
        example = next(x for x in not_scored if x.status == status)
        console.print(
            f"[yellow]  not scored: {n} image(s): {NOT_SCORED[status]} (e.g. {example.image_id}: {example.reason})",
            highlight=False,
            soft_wrap=True,
        )
    others = sorted(set(manifest.counts) - set(splits))
    if others:
        left = sum(manifest.counts[s]["images"] for s in others)
        console.print(
            f"not asked for: {left} image(s) in split(s) {', '.join(others)} (--split)", soft_wrap=True
        )
    if not from_folder and manifest.rejects:
        console.print(
            f"the dataset's conversion rejected {manifest.rejects} input(s) before this (reasons in its rejects.parquet)",
            soft_wrap=True,
        )


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


@app.command("audit")
def cas_audit(
    out: Annotated[Path, typer.Option(help="JSON report to write: per item and per image")],
    images: Annotated[
        str | None,
        typer.Option(help="a folder of PNG/JPEG files with labels.csv (file, labels), or a dataset"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="a dataset directory or URI (phantom datasets carry item ground truth)"),
    ] = None,
    split: Annotated[list[str] | None, typer.Option(help="split(s) of a dataset (default: all)")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="label space of a folder's labels.csv (default: inferred)")
    ] = None,
    vlm: Annotated[
        str | None,
        typer.Option(help="VLM answering by its phrase pairs (default: phantom, the modality's shipped VLM)"),
    ] = None,
    mllm: Annotated[
        str | None, typer.Option(help="MLLM answering each item's question: tiny | path | http URL")
    ] = None,
    mllm_model: Annotated[str | None, typer.Option(help="model name at an MLLM URL")] = None,
    checklists: Annotated[
        list[Path] | None, typer.Option(help="extra checklist YAML layered on the static base")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    limit: Annotated[int | None, typer.Option(min=1, help="audit at most this many images")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Checklist audit: P(criterion met) per image and item (VLM pair score or MLLM P(yes)), pass
    rates per item and, where the data has item ground truth, the item-level AUROC."""
    import json

    from craft_ray.outputs import atomic_file, check_output

    if (images is None) == (data is None):
        raise CraftError("give exactly one of --images (a folder with labels.csv, or a dataset) and --data")
    check_output(out, overwrite)  # before any work: a wrong --out fails at once
    source = images if images is not None else data
    uri, dataset_name, splits = _audit_source(source, dataset, split, folder_ok=images is not None)

    from craft_ray.cas import EvaluatorSpec, build_evaluator
    from craft_ray.evaluation.audit import audit_in_batches, audit_path, audit_report
    from craft_ray.knowledge.checklists import load_knowledge

    spec = EvaluatorSpec(
        dataset_name,
        None,
        vlm or ("tiny" if mllm else "phantom"),  # an MLLM answers the items; the VLM is then unused
        mllm,
        mllm_model,
        checklists=[str(c) for c in checklists or []],
    )
    evaluator = build_evaluator(spec)
    batches, total = _audit_batches(uri, splits, batch_size, limit)
    with progress_bar("checklist audit") as update:
        audited = audit_in_batches(evaluator, batches, update, total)
    questions = {i.id: i.question for i in load_knowledge(spec.checklists).all_items()}
    path = audit_path(evaluator)
    report = {
        "dataset": dataset_name,
        "source": source,
        "splits": splits,
        "vlm": spec.vlm if path == "vlm-surrogate" else None,
        "mllm": spec.mllm,
        **audit_report(audited, questions, path, spec.mllm or spec.vlm),
    }
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(_json_ready(report), indent=1, allow_nan=False) + "\n")
    _print_audit(report)
    console.print(f"wrote {out}", soft_wrap=True)


def _audit_source(
    source: str, dataset: str | None, splits: list[str] | None, folder_ok: bool
) -> tuple[str, str, list[str]]:
    """(dataset URI, dataset name, splits): a folder with labels.csv becomes a temporary dataset."""
    from craft_ray.data import read_manifest
    from craft_ray.data.folder import LABELS_CSV, resolve_images
    from craft_ray.data.schema import MANIFEST_NAME

    path = Path(source)
    is_dataset = "://" in source or (path / MANIFEST_NAME).is_file()
    if not is_dataset:
        if not folder_ok or not (path.is_dir() and (path / LABELS_CSV).is_file()):
            what = (
                "a craft-ray dataset"
                if not folder_ok
                else f"a dataset or a folder of images with {LABELS_CSV}"
            )
            raise CraftError(f"{source}: not {what}")
        if splits:
            raise CraftError("--split applies to a dataset; a folder of images is one split")
        dataset = dataset or _infer_dataset(path / LABELS_CSV)
        source, _ = resolve_images(source, dataset)
        _refuse_rejected_rows(source, path)
    manifest = read_manifest(source)
    if dataset is not None and dataset != manifest.dataset:
        raise CraftError(f"--dataset {dataset}: {source} holds '{manifest.dataset}'")
    chosen = splits or sorted(manifest.counts)
    _check_split(source, chosen)
    return source, manifest.dataset, chosen


def _refuse_rejected_rows(dataset: str, folder: Path) -> None:
    """An audit answers for every image it is given: a folder row that could not be read (a missing
    or truncated file, an unknown label) is an error naming it, not a silently smaller audit."""
    import pyarrow.parquet as pq

    from craft_ray.data.schema import REJECTS_NAME

    rejects = Path(dataset) / REJECTS_NAME
    if not rejects.is_file():
        return
    rows = pq.read_table(rejects).to_pylist()
    if rows:
        more = f" (and {len(rows) - 1} more row(s))" if len(rows) > 1 else ""
        reason = str(rows[0].get("reason", rows[0]))
        where = f"{folder}/" if reason.startswith("labels.csv") else ""
        raise CraftError(f"{where}{reason}{more}")


def _infer_dataset(labels_csv: Path) -> str:
    """The one dataset whose label space holds every label of labels.csv."""
    import csv
    import re

    from craft_ray.knowledge.labels import DATASETS

    with labels_csv.open(newline="") as handle:
        cells = [row.get("labels") or "" for row in csv.DictReader(handle)]
    labels = {x.strip() for cell in cells for x in re.split(r"[|;,]", cell) if x.strip()}
    overlap = {name: len(labels & set(spec.labels)) for name, spec in DATASETS.items()}
    best = max(overlap.values(), default=0)
    fits = [name for name, n in overlap.items() if n == best]
    if best == 0 or len(fits) != 1:
        found = ", ".join(sorted(labels)) or "none"
        raise CraftError(
            f"{labels_csv}: cannot tell the dataset from its labels ({found}); pass --dataset "
            f"({', '.join(DATASETS)})"
        )
    return fits[0]  # the folder reader then names any label outside its label space


def _audit_batches(uri: str, splits: list[str], batch_size: int, limit: int | None):
    """(generator of (images, label sets, image ids, item ground truths), number of images). Images
    are read in RGB, so a colour defect on a greyscale modality stays visible to the audit, through
    the one image path (`prepare`): each one's centre square at the side of the first image, so a
    folder of mixed sizes is audited as `cas score` scores it."""
    import json

    import torch

    from craft_ray.data import read_table
    from craft_ray.data.images import prepare

    tables = [read_table(uri, s, columns=["image_id", "labels", "attributes", "image"]) for s in splits]
    total = sum(t.num_rows for t in tables)
    total = min(total, limit) if limit else total

    def batches():
        done, side = 0, None
        for table in tables:
            for start in range(0, table.num_rows, batch_size):
                if done >= total:
                    return
                rows = table.slice(start, min(batch_size, total - done)).to_pylist()
                if side is None:
                    side = int(min(prepare(rows[0]["image"], 3).pixels.shape[-2:]))
                pixels = torch.stack([prepare(r["image"], 3, side).pixels for r in rows])
                truths = [json.loads(r["attributes"] or "{}").get("items", {}) for r in rows]
                yield pixels, [r["labels"] for r in rows], [r["image_id"] for r in rows], truths
                done += len(rows)

    return batches(), total


def _json_ready(value):
    """NaN -> None, so the report is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def _print_audit(report: dict) -> None:
    def fmt(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    path = "MLLM P(yes)" if report["path"] == "mllm" else "VLM phrase pairs"
    console.print(
        f"checklist audit of {report['source']}, answered by {path} ({report['model']})", soft_wrap=True
    )
    table = Table(title="checklist audit")
    for col in ("item", "applies to", "pass rate", "with truth", "met", "AUROC"):
        table.add_column(col, justify="right" if col != "item" else "left")
    for item, row in report["items"].items():
        truth = row.get("ground_truth", {})
        table.add_row(
            escape(item),
            str(row.get("n", 0)),
            fmt(row.get("pass_rate")),
            str(truth.get("n", "-")),
            str(truth.get("met", "-")),
            fmt(truth.get("auroc")),
        )
    table.caption = (
        "pass rate: P(met) > 0.5 over the images the item applies to (its labels and modality); "
        "AUROC: P(met) against the data's item ground truth, over every image that has it"
    )
    console.print(table)
    if report["ground_truth"]:
        console.print(
            f"item AUROC against ground truth: min {fmt(report['item_auroc_min'])}, mean "
            f"{fmt(report['item_auroc_mean'])} over {sum(1 for r in report['items'].values() if r.get('ground_truth', {}).get('auroc') is not None)} items",
            soft_wrap=True,
        )
