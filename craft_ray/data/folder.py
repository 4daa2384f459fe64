"""A plain folder of PNG/JPEG files with a `labels.csv` (columns `file`, `labels`) as a dataset.

So images from any generator can be scored: the folder is converted into a temporary canonical
dataset (split `images`, image ids = file names) that every reader understands. Labels in a cell
are separated by `|` or `;` (or `,` inside a quoted cell): `"Pleural Effusion|Support Devices"`.
All images are brought to one square size (the shorter side of the first image, centre crop).
"""

from __future__ import annotations

import atexit
import csv
import re
import shutil
import tempfile
from pathlib import Path

from craft_ray.data.images import encode_png, load_image
from craft_ray.data.schema import MANIFEST_NAME, ImageRecord, Manifest
from craft_ray.data.writer import DatasetWriter
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import get_dataset

LABELS_CSV = "labels.csv"
FOLDER_SPLIT = "images"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_labels_csv(folder: Path, known: tuple[str, ...]) -> list[tuple[Path, list[str]]]:
    path = folder / LABELS_CSV
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "labels"} <= set(reader.fieldnames):
            raise DataError(f"{path}: needs the columns 'file' and 'labels', got {reader.fieldnames}")
        rows = []
        for n, row in enumerate(reader, start=2):
            name, cell = (row.get("file") or "").strip(), (row.get("labels") or "").strip()
            labels = [x.strip() for x in re.split(r"[|;,]", cell) if x.strip()]
            if not name or not labels:
                raise DataError(f"{path} line {n}: empty file name or labels")
            unknown = [x for x in labels if x not in known]
            if unknown:
                raise DataError(f"{path} line {n}: unknown label(s) {unknown} (known: {', '.join(known)})")
            image = folder / name
            if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
                raise DataError(f"{path} line {n}: {name} is not a PNG/JPEG file in {folder}")
            rows.append((image, labels))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def folder_to_dataset(folder: str | Path, dataset: str, out: str | Path) -> Manifest:
    """Convert `folder` (images + labels.csv) into a canonical dataset at `out`."""
    folder, spec = Path(folder), get_dataset(dataset)
    rows = read_labels_csv(folder, spec.labels)
    mode = "L" if spec.channels == 1 else "RGB"
    side = min(load_image(rows[0][0], mode).size)
    with DatasetWriter(Path(out), spec.name, spec.modality, list(spec.labels)) as writer:
        for image_path, labels in rows:
            image = load_image(image_path, mode, side)
            writer.add(
                ImageRecord(
                    image_id=image_path.name,
                    patient_id=image_path.name,
                    split=FOLDER_SPLIT,
                    dataset=spec.name,
                    modality=spec.modality,
                    labels=sorted(labels, key=spec.labels.index),
                    image=encode_png(image),
                    width=side,
                    height=side,
                    source=str(image_path),
                )
            )
        return writer.close("folder", {"folder": str(folder.resolve()), "size": side})


def resolve_images(uri: str, dataset: str) -> str:
    """A canonical dataset URI as it is; a folder with labels.csv converted to a temporary dataset
    (removed when the process exits)."""
    path = Path(uri)
    if "://" in uri or (path / MANIFEST_NAME).is_file():
        return uri
    if path.is_dir() and (path / LABELS_CSV).is_file():
        tmp = Path(tempfile.mkdtemp(prefix="craft-images-"))
        atexit.register(shutil.rmtree, tmp, True)
        folder_to_dataset(path, dataset, tmp / "dataset")
        return str(tmp / "dataset")
    raise DataError(
        f"{uri}: neither a craft-ray dataset ({MANIFEST_NAME}) nor a folder of PNG/JPEG files with {LABELS_CSV}"
    )
