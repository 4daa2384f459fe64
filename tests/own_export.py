"""A researcher's own small CheXpert-layout export, made up for tests and shell walks: JPEGs of
several non-square sizes, 16-bit PNGs (12-bit values, as DICOM exports hold), rows whose only
findings are uncertain, lateral views, a truncated and a missing file, and the official valid.csv.

`python tests/own_export.py DIR` writes it under DIR (the README's walk-through uses it too).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = (
    "No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,"
    "Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
).split(",")
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS]
ROOT_NAME = "CheXpert-v1.0-small"

# (patient, view, width x height, kind, labels {name: cell}); kind: jpeg | png16 | truncated | missing
FRONTAL = [
    (1, "Frontal", (72, 80), "jpeg", {"Cardiomegaly": "1.0"}),
    (2, "Frontal", (96, 64), "jpeg", {"Pleural Effusion": "1.0", "Support Devices": "1.0"}),
    (3, "Frontal", (80, 80), "jpeg", {"No Finding": "1.0"}),
    (4, "Frontal", (64, 90), "jpeg", {"Cardiomegaly": "1.0", "Edema": "-1.0"}),
    (5, "Frontal", (100, 76), "jpeg", {"Lung Opacity": "1.0"}),
    (6, "Frontal", (70, 70), "jpeg", {"No Finding": "1.0"}),
    (7, "Frontal", (88, 66), "jpeg", {"Pleural Effusion": "1.0"}),
    (8, "Frontal", (66, 98), "jpeg", {"Support Devices": "1.0"}),
    (9, "Frontal", (90, 72), "png16", {"Cardiomegaly": "1.0"}),
    (10, "Frontal", (72, 96), "png16", {"Pleural Effusion": "1.0"}),
    (11, "Frontal", (84, 84), "png16", {"No Finding": "1.0"}),
    (12, "Frontal", (76, 68), "jpeg", {"Edema": "-1.0"}),  # only uncertain findings
    (13, "Frontal", (68, 76), "jpeg", {"Atelectasis": "-1.0", "Pneumonia": "-1.0"}),
    (14, "Frontal", (80, 64), "png16", {"Consolidation": "-1.0"}),
    (15, "Frontal", (64, 64), "truncated", {"Cardiomegaly": "1.0"}),
    (16, "Frontal", (64, 64), "missing", {"No Finding": "1.0"}),
    (17, "Frontal", (74, 86), "jpeg", {"Lung Opacity": "1.0", "Pleural Effusion": "1.0"}),
    (18, "Frontal", (92, 70), "jpeg", {"Cardiomegaly": "1.0"}),
]
LATERAL = [(p, "Lateral", (60, 80), "jpeg", {"No Finding": "1.0"}) for p in (1, 2, 3, 5, 6)]
VALID = [
    (64541, "Frontal", (80, 72), "jpeg", {"Pleural Effusion": "1.0"}),
    (64542, "Frontal", (70, 84), "png16", {"Cardiomegaly": "1.0"}),
]


def radiograph(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth chest-like field in [0, 1]: two darker lung fields, a brighter mediastinum, noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    lungs = np.exp(-(((x - 0.3) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2))
    lungs += np.exp(-(((x - 0.7) / 0.14) ** 2 + ((y - 0.5) / 0.3) ** 2))
    field = 0.75 - 0.45 * lungs + 0.25 * np.exp(-(((x - 0.5) / 0.08) ** 2)) * (y > 0.3)
    return np.clip(field + rng.normal(0, 0.04, (h, w)), 0, 1)


def write_png16(path: Path, size: tuple[int, int], seed: int) -> Path:
    """16-bit greyscale PNG with 12-bit values (300..3900): what windowing must bring to 8 bits."""
    values = (300 + radiograph(size, seed) * 3600).round().astype(np.uint16)
    Image.fromarray(values).save(path)
    return path


def _write(root: Path, rel: str, size: tuple[int, int], kind: str, seed: int) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        return
    if kind == "png16":
        write_png16(path, size, seed)
        return
    Image.fromarray((radiograph(size, seed) * 255).round().astype(np.uint8), "L").save(path, quality=95)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _rows(root: Path, folder: str, entries: list) -> list[list[str]]:
    rows = []
    for patient, view, size, kind, labels in entries:
        suffix = "png" if kind == "png16" else "jpg"
        number = 1 if view == "Frontal" else 2
        rel = f"{ROOT_NAME}/{folder}/patient{patient:05d}/study1/view{number}_{view.lower()}.{suffix}"
        _write(root, rel, size, kind, seed=patient * 10 + number)
        cells = [labels.get(label, "") for label in LABELS]
        rows.append([rel, "Female", "61", view, "PA" if view == "Frontal" else "", *cells])
    return rows


def make_export(root: Path) -> Path:
    """Write the export under `root`; returns its CheXpert-v1.0-small directory (the --source)."""
    base = root / ROOT_NAME
    base.mkdir(parents=True, exist_ok=True)
    for name, folder, entries in (("train.csv", "train", FRONTAL + LATERAL), ("valid.csv", "valid", VALID)):
        lines = [HEADER, *_rows(root, folder, entries)]
        (base / name).write_text("\n".join(",".join(row) for row in lines) + "\n")
    return base


if __name__ == "__main__":
    print(make_export(Path(sys.argv[1])))
