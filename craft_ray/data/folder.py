"""A plain folder of image files with a `labels.csv` (columns `file`, `labels`) as a dataset.

So images from any generator can be scored: the folder is converted into a temporary canonical
dataset (split `images`, image ids = file names) that every reader understands. Labels in a cell
are separated by `|` or `;` (or `,` inside a quoted cell): `"Pleural Effusion|Support Devices"`.
Images are stored in the storage form of the one image path (8-bit, own size: no crop, no
resize), so scoring them gives what the CAS service gives for the same files. A row whose file is
missing or unreadable, or whose labels are unknown, becomes a reject (`rejects.parquet`) naming
the path tried; a row with an empty label cell is kept (it is reported as having no label).
"""

from __future__ import annotations

import atexit
import csv
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from craft_ray.data.images import ImageDecodeError, encode_png, load_8bit
from craft_ray.data.schema import MANIFEST_NAME, ImageRecord, Manifest
from craft_ray.data.writer import DatasetWriter
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import get_dataset

LABELS_CSV = "labels.csv"
FOLDER_SPLIT = "images"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


@dataclass
class FolderRow:
    line: int
    name: str  # the `file` cell
    path: Path
    labels: list[str]
    problem: str | None = None  # why the row is rejected


def read_labels_csv(folder: Path, known: tuple[str, ...]) -> list[FolderRow]:
    """Every row of labels.csv; a bad row carries its `problem` instead of failing the folder."""
    path = folder / LABELS_CSV
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs the columns 'file' and 'labels', got {reader.fieldnames}")
        rows, seen = [], set()
        for n, row in enumerate(reader, start=2):
            name, cell = (row.get("file") or "").strip(), (row.get("labels") or "").strip()
            labels = list(dict.fromkeys(x.strip() for x in re.split(r"[|;,]", cell) if x.strip()))
            image = (folder / name).resolve()
            problem = None
            if not name:
                problem = f"{LABELS_CSV} line {n}: empty file name"
            elif name in seen:
                problem = f"{LABELS_CSV} line {n}: {name} is listed twice"
            elif image.suffix.lower() not in IMAGE_SUFFIXES:
                problem = f"{LABELS_CSV} line {n}: {name} is not a PNG, JPEG or TIFF file"
            elif unknown := [x for x in labels if x not in known]:
                problem = f"{LABELS_CSV} line {n}: unknown label(s) {unknown} (known: {', '.join(known)})"
            seen.add(name)
            rows.append(FolderRow(n, name, image, labels, problem))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def folder_to_dataset(folder: str | Path, dataset: str, out: str | Path) -> Manifest:
    """Convert `folder` (images + labels.csv) into a canonical dataset at `out`."""
    folder, spec = Path(folder), get_dataset(dataset)
    rows = read_labels_csv(folder, spec.labels)
    with DatasetWriter(Path(out), spec.name, spec.modality, list(spec.labels)) as writer:
        for row in rows:
            if row.problem is None:
                try:
                    image = load_8bit(row.path, spec.channels)[0]
                except ImageDecodeError as exc:
                    row.problem = f"{LABELS_CSV} line {row.line}: {exc}"
            if row.problem is not None:
                writer.reject(row.name, row.problem)
                continue
            writer.add(
                ImageRecord(
                    image_id=row.name,
                    patient_id=row.name,
                    split=FOLDER_SPLIT,
                    dataset=spec.name,
                    modality=spec.modality,
                    labels=sorted(row.labels, key=spec.labels.index),
                    image=encode_png(image),
                    width=image.width,
                    height=image.height,
                    source=str(row.path),
                )
            )
        return writer.close("folder", {"folder": str(folder.resolve()), "rows": len(rows)})


def resolve_images(uri: str, dataset: str) -> tuple[str, bool]:
    """(canonical dataset URI, whether it was made from a folder): a dataset as it is; a folder
    with labels.csv converted to a temporary dataset (removed when the process exits)."""
    path = Path(uri)
    if "://" in uri or (path / MANIFEST_NAME).is_file():
        return uri, False
    if path.is_dir() and (path / LABELS_CSV).is_file():
        tmp = Path(tempfile.mkdtemp(prefix="craft-images-"))
        atexit.register(shutil.rmtree, tmp, True)
        folder_to_dataset(path, dataset, tmp / "dataset")
        return str(tmp / "dataset"), True
    raise DataError(
        f"{uri}: neither a craft-ray dataset ({MANIFEST_NAME}) nor a folder of image files with {LABELS_CSV}"
    )
