"""The canonical on-disk format shared by every dataset: parquet shards + a JSON manifest.

Layout of a dataset directory:

    <out>/manifest.json               label space, counts per split and label, schema version
    <out>/<split>/part-00000.parquet  rows of IMAGE_SCHEMA (split is also a column)
    <out>/rejects.parquet             inputs that were skipped, with a reason each
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.parquet"

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("uncertain_labels", pa.list_(pa.string()), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # PNG bytes
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # original relative path, or "phantom"
        pa.field("attributes", pa.string(), nullable=False),  # JSON: ground truth and metadata
    ],
    metadata={"craft_ray.schema_version": str(SCHEMA_VERSION)},
)

# Every column but the image bytes: cheap to load for indexing, splitting and label counts.
METADATA_COLUMNS = [name for name in IMAGE_SCHEMA.names if name != "image"]

REJECTS_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string())])


@dataclass
class ImageRecord:
    """One row of IMAGE_SCHEMA."""

    image_id: str
    patient_id: str
    split: str
    dataset: str
    modality: str
    labels: list[str]
    image: bytes
    width: int
    height: int
    source: str
    uncertain_labels: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = dict(self.__dict__)  # shallow: asdict() would deep-copy the image bytes
        row["attributes"] = json.dumps(self.attributes, sort_keys=True)
        return row


@dataclass
class Reject:
    source: str
    reason: str


@dataclass
class Manifest:
    dataset: str
    modality: str
    label_space: list[str]
    counts: dict[str, dict[str, int]]  # split -> {"images": n, "patients": n, <label>: n, ...}
    rejects: int
    origin: str  # "converted" | "phantom"
    options: dict[str, Any]  # how it was made (seed, fractions, size, policy ...)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))
