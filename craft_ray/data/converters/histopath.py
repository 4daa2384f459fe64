"""NCT-CRC-HE-100K style: one folder per tissue class (ADI, BACK, DEB, LYM, MUC, MUS, NORM, STR, TUM).

The public release carries no slide or patient ids, so each patch is its own split unit; say so
when comparing with slide-level splits.
"""

from __future__ import annotations

from pathlib import Path

from craft_ray.data.converters.base import IMAGE_SUFFIXES, ConvertOptions, ParsedSource, SourceItem
from craft_ray.data.schema import Reject
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DATASETS

SPEC = DATASETS["histopath"]


def _class_root(source: Path) -> Path:
    """The folder whose sub-folders are class names: source itself or its single child."""
    children = [p for p in sorted(source.iterdir()) if p.is_dir()]
    if any(c.name in SPEC.labels for c in children):
        return source
    if len(children) == 1:
        return _class_root(children[0])
    raise DataError(f"{source}: expected one folder per class ({', '.join(SPEC.labels)})")


def parse(source: Path, options: ConvertOptions) -> ParsedSource:
    root = _class_root(source)
    parsed = ParsedSource()
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            rel = str(path.relative_to(root))
            if class_dir.name not in SPEC.labels:
                reason = f"unknown class folder '{class_dir.name}' (known: {', '.join(SPEC.labels)})"
                parsed.rejects.append(Reject(rel, reason))
                continue
            parsed.items.append(
                SourceItem(
                    path=path,
                    image_id=path.stem,
                    patient_id=path.stem,
                    labels=[class_dir.name],
                    source=rel,
                )
            )
    return parsed
