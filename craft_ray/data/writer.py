"""Writes canonical datasets: sharded parquet per split, the rejects table and the manifest."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from craft_ray.data.schema import (
    IMAGE_SCHEMA,
    MANIFEST_NAME,
    REJECTS_NAME,
    REJECTS_SCHEMA,
    ImageRecord,
    Manifest,
    Reject,
)
from craft_ray.errors import DataError
from craft_ray.outputs import check_output

ROW_GROUP_SIZE = 64  # small row groups keep random access by training workers cheap


def check_dataset_output(out: str | Path, overwrite: bool = False) -> Path:
    """A dataset directory may be written where nothing is, in an empty directory, or (with
    --overwrite) over an existing dataset; never over other files, even with --overwrite."""
    out = check_output(out, overwrite=True, kind="dir")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST_NAME).is_file():
            raise DataError(
                f"{out} is not empty and holds no craft-ray dataset; choose an empty or new directory"
            )
        if not overwrite:
            raise DataError(f"{out} already holds a dataset; choose another directory or pass --overwrite")
    return out


class DatasetWriter:
    """Streams records into `<out>/<split>/part-NNNNN.parquet`, counting as it goes.

    Use as a context manager; the manifest and rejects are written on a clean exit only, so an
    interrupted conversion never leaves a directory that looks complete.
    """

    def __init__(
        self, out: Path, dataset: str, modality: str, label_space: list[str], rows_per_shard: int = 4096
    ):
        self.out = Path(out)
        if (self.out / MANIFEST_NAME).exists() or any(self.out.glob("*/part-*.parquet")):
            raise DataError(f"{self.out} already holds a dataset; choose an empty output directory")
        self.out.mkdir(parents=True, exist_ok=True)
        self.dataset, self.modality, self.label_space = dataset, modality, label_space
        self.rows_per_shard = rows_per_shard
        self._buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._shard_index: Counter[str] = Counter()
        self._label_counts: dict[str, Counter[str]] = defaultdict(Counter)
        self._patients: dict[str, set[str]] = defaultdict(set)
        self.rejects: list[Reject] = []

    def add(self, record: ImageRecord) -> None:
        self._buffers[record.split].append(record.as_row())
        self._label_counts[record.split]["images"] += 1
        self._label_counts[record.split].update(record.labels)
        self._patients[record.split].add(record.patient_id)
        if len(self._buffers[record.split]) >= self.rows_per_shard:
            self._flush(record.split)

    def reject(self, source: str, reason: str) -> None:
        self.rejects.append(Reject(source, reason))

    def _flush(self, split: str) -> None:
        rows = self._buffers.pop(split, [])
        if not rows:
            return
        split_dir = self.out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        path = split_dir / f"part-{self._shard_index[split]:05d}.parquet"
        self._shard_index[split] += 1
        table = pa.Table.from_pylist(rows, schema=IMAGE_SCHEMA)
        pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE, compression="zstd")

    def close(self, origin: str, options: dict[str, Any]) -> Manifest:
        for split in list(self._buffers):
            self._flush(split)
        rejects = pa.Table.from_pylist([vars(r) for r in self.rejects], schema=REJECTS_SCHEMA)
        pq.write_table(rejects, self.out / REJECTS_NAME)
        counts = {}
        for split in sorted(self._label_counts):
            split_counts = self._label_counts[split]
            counts[split] = {"images": split_counts["images"], "patients": len(self._patients[split])}
            counts[split].update({label: split_counts[label] for label in self.label_space})
        manifest = Manifest(
            dataset=self.dataset,
            modality=self.modality,
            label_space=list(self.label_space),
            counts=counts,
            rejects=len(self.rejects),
            origin=origin,
            options=options,
        )
        (self.out / MANIFEST_NAME).write_text(manifest.to_json())
        return manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._buffers.clear()
