"""The study directory: what `craft study create` writes and the app and the analysis read.

    <study>/manifest.json     runs the study came from, n, seed, dataset, the readers' access list
                              and the SHA-256 of each reader's access token (never the token)
    <study>/pairs.parquet     one row per pair: pair id, label set, seed, left/right opaque image ids
    <study>/key.parquet       the hidden mapping: which source is on which side (never served)
    <study>/images/<id>.png   one file per shown image, named by an opaque id
    <study>/answers.sqlite    the readers' answers (written by the app, append-only)

The app reads the manifest (access list), the pairs and the images; only the analysis reads the key.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from craft_ray.errors import StudyError
from craft_ray.outputs import write_text_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PAIRS = "pairs.parquet"
KEY = "key.parquet"
IMAGES = "images"
ANSWERS = "answers.sqlite"
READER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
REAL = "real"  # the source name of real images mixed in as a control

PAIRS_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("left_image", pa.string(), nullable=False),
        pa.field("right_image", pa.string(), nullable=False),
    ]
)
KEY_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "generated" | "control"
        pa.field("left_source", pa.string(), nullable=False),
        pa.field("right_source", pa.string(), nullable=False),
    ]
)


def check_reader_id(reader: str) -> str:
    if not READER_PATTERN.match(reader):
        raise StudyError(
            f"reader id {reader!r}: use 1-64 letters, digits and _ . @ - (starting with a letter or digit)"
        )
    return reader


class Source(BaseModel):
    """One side of a comparison: a training run's final model, or real images (the control)."""

    model_config = ConfigDict(extra="forbid")
    name: str  # unique within the study; what the analysis reports
    method: str  # the run's training method, or "real"
    run: str | None = None  # absolute run directory (None for real images)
    base: str | None = None
    step: int | None = None
    sampler: dict[str, int | float] | None = None


class StudyManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT_VERSION
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    dataset: str
    data_uri: str
    split: str
    labels: list[str]
    n: int
    seed: int
    controls: int = 0
    pairs: int
    sources: list[Source]
    readers: list[str]
    # reader -> "sha256:<hex>" of the reader's access token; a reader without one cannot get in
    reader_tokens: dict[str, str] = Field(default_factory=dict)

    @field_validator("readers")
    @classmethod
    def _readers(cls, readers: list[str]) -> list[str]:
        for reader in readers:
            try:
                check_reader_id(reader)
            except StudyError as exc:
                raise ValueError(str(exc)) from None
        if len(set(readers)) != len(readers):
            raise ValueError("reader ids must be unique")
        return readers

    @model_validator(mode="after")
    def _tokens_of_readers(self) -> StudyManifest:
        strangers = sorted(set(self.reader_tokens) - set(self.readers))
        if strangers:
            raise ValueError(f"reader_tokens: {strangers} are not in readers")
        bad = sorted(r for r, h in self.reader_tokens.items() if not re.fullmatch(r"sha256:[0-9a-f]{64}", h))
        if bad:
            raise ValueError(f"reader_tokens: the entries of {bad} are not sha256:<64 hex digits>")
        return self


class StudyDir:
    """Paths and readers of one study directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        missing = [name for name in (MANIFEST, PAIRS, IMAGES) if not (self.root / name).exists()]
        if missing:
            raise StudyError(
                f"{root}: not a study directory (no {', '.join(missing)}); make one with `craft study create`"
            )

    @property
    def answers_path(self) -> Path:
        return self.root / ANSWERS

    def image_path(self, image_id: str) -> Path:
        return self.root / IMAGES / f"{image_id}.png"

    def manifest(self) -> StudyManifest:
        path = self.root / MANIFEST
        try:
            return StudyManifest.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as exc:
            raise StudyError(f"{path}: not a valid study manifest: {exc}") from None

    def pairs(self) -> list[dict]:
        return _read_rows(self.root / PAIRS, PAIRS_SCHEMA)

    def key(self) -> dict[str, dict]:
        """pair id -> {kind, left_source, right_source}: for the analysis only."""
        return {row.pop("pair_id"): row for row in _read_rows(self.root / KEY, KEY_SCHEMA)}


def _read_rows(path: Path, schema: pa.Schema) -> list[dict]:
    if not path.is_file():
        raise StudyError(f"{path}: missing; the study directory is incomplete")
    table = pq.read_table(path)
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise StudyError(f"{path}: missing column(s) {missing}")
    return table.select(schema.names).to_pylist()


def write_manifest(root: Path, manifest: StudyManifest) -> None:
    """Atomically (temp name + rename): a running app may read it at any moment."""
    write_text_atomic(root / MANIFEST, manifest.model_dump_json(indent=2) + "\n")


def write_table(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
