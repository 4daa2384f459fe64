"""Diabetic-retinopathy grading: APTOS-2019 (id_code, diagnosis) or EyePACS (image, level) + images.

Grades 0-4 map to the label names of `DR_GRADES`. EyePACS names images '<patient>_left' /
'<patient>_right', so both eyes of a patient share a split; APTOS has no patient ids.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from craft_ray.data.converters.base import (
    ConvertOptions,
    ParsedSource,
    SourceItem,
    index_images,
    open_csv,
    read_csv_rows,
)
from craft_ray.data.schema import Reject
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DR_GRADES

LAYOUTS = {"aptos": ("id_code", "diagnosis"), "eyepacs": ("image", "level")}
_EYE_RE = re.compile(r"^(.+)_(left|right)$")


def _find_labels_csv(source: Path) -> tuple[Path, str]:
    for path in sorted(source.rglob("*.csv")):
        with open_csv(path) as handle:
            header = next(csv.reader(handle), [])
        for layout, (id_col, grade_col) in LAYOUTS.items():
            if id_col in header and grade_col in header:
                return path, layout
    raise DataError(f"{source}: no CSV with columns (id_code, diagnosis) [APTOS] or (image, level) [EyePACS]")


def parse(source: Path, options: ConvertOptions) -> ParsedSource:
    labels_csv, layout = _find_labels_csv(source)
    id_col, grade_col = LAYOUTS[layout]
    images = index_images(source)
    parsed = ParsedSource()
    for line, row in read_csv_rows(labels_csv, [id_col, grade_col], parsed.rejects):
        where = f"{labels_csv.name}:{line}"
        image_id, grade_text = row[id_col].strip(), row[grade_col].strip()
        try:
            grade = int(float(grade_text))
            if float(grade_text) != grade or not 0 <= grade <= 4:
                raise ValueError
        except ValueError:
            parsed.rejects.append(Reject(where, f"unknown DR grade {grade_text!r} (expected 0-4)"))
            continue
        path = images.get(image_id)
        if path is None:
            parsed.rejects.append(Reject(where, f"image file for '{image_id}' not found under {source}"))
            continue
        eye = _EYE_RE.match(image_id)
        parsed.items.append(
            SourceItem(
                path=path,
                image_id=image_id,
                patient_id=eye.group(1) if eye else image_id,
                labels=[DR_GRADES[grade]],
                source=str(path.relative_to(source)),
                attributes={"dr_grade": grade, "layout": layout, **({"eye": eye.group(2)} if eye else {})},
            )
        )
    return parsed
