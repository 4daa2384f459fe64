"""ISIC 2019: one-hot ground-truth CSV (image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK) + images.

When the metadata CSV (image, lesion_id, age_approx, sex, anatom_site_general) is present, the
lesion id is the grouping key for splits, so images of one lesion never straddle splits.
"""

from __future__ import annotations

from pathlib import Path

from craft_ray.data.converters.base import (
    ConvertOptions,
    ParsedSource,
    SourceItem,
    index_images,
    read_csv_rows,
)
from craft_ray.data.schema import Reject
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DATASETS

SPEC = DATASETS["isic"]


def _one(source: Path, pattern: str, what: str, required: bool = True) -> Path | None:
    matches = sorted(source.rglob(pattern))
    if not matches and required:
        raise DataError(f"{source}: no {what} ({pattern}) found")
    return matches[0] if matches else None


def _metadata(path: Path | None, rejects: list[Reject]) -> dict[str, dict[str, str]]:
    """image -> metadata row; a malformed row is a reject (its image still converts, without it)."""
    if path is None:
        return {}
    return {row["image"].strip(): row for _, row in read_csv_rows(path, ["image"], rejects)}


def _is_one(cell: str) -> bool | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value == 1.0 if value in (0.0, 1.0) else None


def parse(source: Path, options: ConvertOptions) -> ParsedSource:
    gt_csv = _one(source, "*GroundTruth*.csv", "ground-truth CSV")
    parsed = ParsedSource()
    meta = _metadata(_one(source, "*Metadata*.csv", "metadata CSV", required=False), parsed.rejects)
    images = index_images(source)
    classes = [c for c in SPEC.labels if c != "UNK"]
    for line, row in read_csv_rows(gt_csv, ["image", *classes], parsed.rejects):
        where = f"{gt_csv.name}:{line}"
        image_id = row["image"].strip()
        columns = [c for c in SPEC.labels if c in row]
        flags = {c: _is_one(row[c].strip()) for c in columns}
        bad = [c for c, flag in flags.items() if flag is None]
        if bad:
            parsed.rejects.append(Reject(where, f"non-binary value in column(s) {bad} (expected 0 or 1)"))
            continue
        positives = [c for c, flag in flags.items() if flag]
        if len(positives) != 1:
            detail = f" ({', '.join(positives)})" if positives else ""
            parsed.rejects.append(
                Reject(where, f"one-hot row has {len(positives)} classes set{detail}; expected exactly one")
            )
            continue
        path = images.get(image_id)
        if path is None:
            parsed.rejects.append(Reject(where, f"image file for '{image_id}' not found under {source}"))
            continue
        info = meta.get(image_id, {})
        lesion = (info.get("lesion_id") or "").strip()
        parsed.items.append(
            SourceItem(
                path=path,
                image_id=image_id,
                patient_id=lesion or image_id,
                labels=positives,
                source=str(path.relative_to(source)),
                attributes={k: v for k, v in info.items() if k != "image" and v not in (None, "")},
            )
        )
    return parsed
