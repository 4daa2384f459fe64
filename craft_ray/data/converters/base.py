"""The conversion pipeline every dataset shares: parsed rows -> split -> decode -> parquet."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from craft_ray.data.images import ImageDecodeError, encode_png, load_image
from craft_ray.data.schema import ImageRecord, Manifest, Reject
from craft_ray.data.splits import DEFAULT_FRACTIONS, assign_splits
from craft_ray.data.writer import DatasetWriter
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DatasetSpec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass
class ConvertOptions:
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    seed: int = 0
    size: int | None = None  # resize to size x size (shorter side + centre crop); None keeps originals
    uncertainty: Literal["ones", "zeros", "ignore"] = "ignore"  # CheXpert -1 labels
    frontal_only: bool = False  # CheXpert: drop lateral views
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


@dataclass
class ParsedSource:
    items: list[SourceItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    filtered: int = 0  # rows left out on purpose by an option (e.g. lateral views)


def read_csv_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a CSV, after checking its header has the required columns."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [col for col in required if col not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} (found: {reader.fieldnames})")
        for row in reader:
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
    splits = assign_splits((i.patient_id for i in items), options.fractions, options.seed)
    mode = "L" if spec.channels == 1 else "RGB"
    with DatasetWriter(out, spec.name, spec.modality, list(spec.labels)) as writer:
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
        return writer.close(
            origin,
            {
                "seed": options.seed,
                "fractions": options.fractions,
                "size": options.size,
                "uncertainty": options.uncertainty,
                "frontal_only": options.frontal_only,
                "filtered": parsed.filtered,
            },
        )
