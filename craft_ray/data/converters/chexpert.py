"""CheXpert-v1.0 / CheXpert-v1.0-small: train.csv and valid.csv with 14 observations.

Observation cells are 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned,
treated as negative). The uncertainty policy maps -1: `ones` -> positive, `zeros` -> negative,
`ignore` -> neither, recorded in `uncertain_labels` so a loss can mask it.

valid.csv is the official validation set (radiologist-labelled, the one results are reported on):
its images form their own split `valid` unless `pool_valid` puts them into the random split.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from craft_ray.data.converters.base import ConvertOptions, ParsedSource, SourceItem, read_csv_rows
from craft_ray.data.schema import Reject
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DATASETS

SPEC = DATASETS["chexpert"]
CSV_NAMES = ("train.csv", "valid.csv")
META_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
_PATH_RE = re.compile(r"(patient\d+)/(study\d+)/(view\d+_\w+)\.\w+$")
UNCERTAIN_ROWS = "images with uncertain (-1) labels"
NO_POSITIVE_ROWS = "of which with no positive label"
_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}


def _find_csvs(source: Path) -> list[Path]:
    found = []
    for name in CSV_NAMES:
        matches = sorted(source.glob(name)) or sorted(source.glob(f"*/{name}"))
        found.extend(matches[:1])
    if not found:
        raise DataError(f"{source}: no CheXpert train.csv or valid.csv (looked in it and one level down)")
    return found


def _candidates(csv_path: Path, rel: str) -> list[Path]:
    """CSV paths start with the dataset folder ('CheXpert-v1.0-small/train/...'): the places tried,
    in order: beside the dataset folder, inside the CSV's folder, and inside it without the first part."""
    parts = PurePosixPath(rel).parts
    candidates = [csv_path.parent.parent.joinpath(*parts), csv_path.parent.joinpath(*parts)]
    if len(parts) > 1:
        candidates.append(csv_path.parent.joinpath(*parts[1:]))
    return list(dict.fromkeys(c.resolve() for c in candidates))


def _age(cell: str) -> int | None | str:
    """Years as an int, None when blank, 'bad' when not a number."""
    cell = cell.strip()
    if not cell:
        return None
    try:
        return int(float(cell))
    except (ValueError, OverflowError):
        return "bad"


def parse(source: Path, options: ConvertOptions) -> ParsedSource:
    parsed = ParsedSource()
    for csv_path in _find_csvs(source):
        official = "valid" if csv_path.name == "valid.csv" else "train"
        for line, row in read_csv_rows(csv_path, META_COLUMNS + list(SPEC.labels), parsed.rejects):
            where = f"{csv_path.name}:{line}"
            rel = row["Path"].strip()
            match = _PATH_RE.search(rel)
            if not match:
                parsed.rejects.append(Reject(where, f"path {rel!r} has no patientNNNNN/studyN/viewN_* part"))
                continue
            view = row["Frontal/Lateral"].strip()
            if options.frontal_only and view != "Frontal":
                parsed.filter(f"{view or 'blank'} view (--frontal-only)")
                continue
            labels, uncertain, any_uncertain, bad = [], [], False, None
            for label in SPEC.labels:
                cell = row[label].strip()
                if cell not in _VALUES:
                    bad = f"column {label!r} has value {cell!r} (expected 1, 0, -1 or blank)"
                    break
                value = _VALUES[cell]
                if value == -1:
                    any_uncertain = True
                    if options.uncertainty == "ones":
                        value = 1
                    elif options.uncertainty == "ignore":
                        uncertain.append(label)
                if value == 1:
                    labels.append(label)
            if bad:
                parsed.rejects.append(Reject(where, bad))
                continue
            patient, study, view_name = match.groups()
            age = _age(row["Age"])
            if age == "bad":
                parsed.rejects.append(
                    Reject(where, f"column 'Age' has value {row['Age']!r} (expected a number or blank)")
                )
                continue
            tried = _candidates(csv_path, rel)
            path = next((c for c in tried if c.is_file()), None)
            if path is None:
                parsed.rejects.append(Reject(rel, f"file not found (tried {', '.join(map(str, tried))})"))
                continue
            if any_uncertain:
                parsed.uncertain[UNCERTAIN_ROWS] += 1
                if not labels:
                    parsed.uncertain[NO_POSITIVE_ROWS] += 1
            parsed.items.append(
                SourceItem(
                    path=path,
                    image_id=f"{patient}_{study}_{view_name}",
                    patient_id=patient,
                    labels=labels,
                    uncertain_labels=uncertain,
                    source=rel,
                    attributes={
                        "sex": row["Sex"].strip(),
                        "age": age,
                        "view": view,
                        "projection": row["AP/PA"].strip(),
                        "study": study,
                        "official_split": official,
                    },
                    split="valid" if official == "valid" and not options.pool_valid else None,
                )
            )
    return parsed
