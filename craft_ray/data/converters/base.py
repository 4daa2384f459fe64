"""The conversion pipeline every dataset shares: parsed rows -> split -> decode -> parquet."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from PIL import Image

from craft_ray.data.images import ImageDecodeError, encode_png, load_image
from craft_ray.data.schema import ImageRecord, Manifest, Reject
from craft_ray.data.splits import DEFAULT_FRACTIONS, assign_splits
from craft_ray.data.writer import DatasetWriter
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DatasetSpec
from craft_ray.outputs import atomic_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass
class ConvertOptions:
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    seed: int = 0
    size: int | None = None  # resize to size x size (shorter side + centre crop); None keeps originals
    uncertainty: Literal["ones", "zeros", "ignore"] = "ignore"  # CheXpert -1 labels
    frontal_only: bool = False  # CheXpert: drop lateral views
    pool_valid: bool = False  # CheXpert: pool valid.csv into the random split instead of split "valid"
    threads: int = 4  # PIL releases the GIL while decoding, resizing and encoding


@dataclass
class SourceItem:
    """One image as described by the dataset's own files, before decoding."""

    path: Path
    image_id: str
    patient_id: str
    labels: list[str]
    source: str
    uncertain_labels: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # a split fixed by the source (CheXpert's official valid set); else random


@dataclass
class ParsedSource:
    items: list[SourceItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    filtered: Counter[str] = field(default_factory=Counter)  # why -> rows left out on purpose by an option
    uncertain: Counter[str] = field(default_factory=Counter)  # what the uncertainty policy did -> rows

    def filter(self, why: str) -> None:
        self.filtered[why] += 1


def open_csv(path: Path) -> TextIO:
    """UTF-8 text whose undecodable bytes survive as lone surrogates (one bad byte must cost one row,
    not the file); `csv_problem` finds them per row."""
    return path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")


def csv_problem(row: dict[str | None, Any], n_columns: int) -> str | None:
    """Why a DictReader row is malformed (too few or too many fields, bytes that are not UTF-8), or None."""
    if None in row:
        return f"row has {n_columns + len(row[None])} fields, the header has {n_columns}"
    if any(value is None for value in row.values()):
        return f"row has {sum(v is not None for v in row.values())} fields, the header has {n_columns}"
    for column, value in row.items():
        bad = next((ch for ch in value if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:
            return f"column {column!r} is not valid UTF-8 (byte 0x{ord(bad) - 0xDC00:02x})"
    return None


def read_csv_rows(
    path: Path, required: list[str], rejects: list[Reject]
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) of the well-formed rows of a CSV, after checking its header has the
    required columns; each malformed row becomes one reject (`<file>:<line>`) and the rest go on."""
    with open_csv(path) as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames or []
        missing = [col for col in required if col not in fieldnames]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} (found: {fieldnames})")
        for row in reader:
            problem = csv_problem(row, len(fieldnames))
            if problem:
                rejects.append(Reject(f"{path.name}:{reader.line_num}", problem))
            else:
                yield reader.line_num, row


def index_images(root: Path) -> dict[str, Path]:
    """Map file stem -> path for every image file under root (first one wins, sorted order)."""
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.stem, path)
    return index


def _load(item: SourceItem, mode: str, size: int | None) -> tuple[SourceItem, Image.Image | str]:
    try:
        return item, load_image(item.path, mode, size)
    except ImageDecodeError as exc:
        return item, str(exc)


def write_dataset(
    spec: DatasetSpec,
    parsed: ParsedSource,
    out: Path,
    options: ConvertOptions,
    progress: ProgressFn | None = None,
    origin: str = "converted",
) -> Manifest:
    """Split by patient, decode every image (rejecting those that fail), write shards and manifest."""
    if not parsed.items and not parsed.rejects:
        raise DataError("no images found in the source: check --source and the dataset layout")
    items: list[SourceItem] = []
    seen: set[str] = set()
    duplicate_rejects = []
    for item in parsed.items:
        if item.image_id in seen:
            duplicate_rejects.append(Reject(item.source, f"duplicate image id '{item.image_id}'"))
        else:
            seen.add(item.image_id)
            items.append(item)
    splits = _splits(items, options)
    mode = "L" if spec.channels == 1 else "RGB"
    with atomic_dir(out) as tmp, DatasetWriter(tmp, spec.name, spec.modality, list(spec.labels)) as writer:
        for rej in [*parsed.rejects, *duplicate_rejects]:
            writer.reject(rej.source, rej.reason)
        with ThreadPoolExecutor(max_workers=max(1, options.threads)) as pool:
            loaded = pool.map(lambda it: _load(it, mode, options.size), items)
            for done, (item, result) in enumerate(loaded, start=1):
                if isinstance(result, str):
                    writer.reject(item.source, result)
                else:
                    writer.add(
                        ImageRecord(
                            image_id=item.image_id,
                            patient_id=item.patient_id,
                            split=splits[item.patient_id],
                            dataset=spec.name,
                            modality=spec.modality,
                            labels=item.labels,
                            uncertain_labels=item.uncertain_labels,
                            image=encode_png(result),
                            width=result.width,
                            height=result.height,
                            source=item.source,
                            attributes=item.attributes,
                        )
                    )
                if progress:
                    progress(done, len(items))
        manifest = writer.close(
            origin,
            {
                "seed": options.seed,
                "fractions": options.fractions,
                "size": options.size,
                "uncertainty": options.uncertainty,
                "frontal_only": options.frontal_only,
                "pool_valid": options.pool_valid,
                "filtered": sum(parsed.filtered.values()),
                "filtered_by": dict(parsed.filtered),
                "uncertain": dict(parsed.uncertain),
            },
        )
    return manifest


def _splits(items: list[SourceItem], options: ConvertOptions) -> dict[str, str]:
    """patient -> split: a split fixed by the source holds all of its patients' images (no patient
    straddles splits); the other patients are split at random by the fractions."""
    fixed = {item.patient_id: item.split for item in items if item.split}
    free = {item.patient_id for item in items} - set(fixed)
    splits = assign_splits(free, options.fractions, options.seed) if free else {}
    return {**splits, **fixed}
