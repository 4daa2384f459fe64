"""Reading canonical datasets: as a Ray Dataset (batch jobs) or a torch Dataset (training workers).

URIs may be local paths or anything pyarrow's filesystems understand (s3://, gs://).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from craft_ray.data.images import ImageDecodeError, prepare_image
from craft_ray.data.schema import MANIFEST_NAME, METADATA_COLUMNS, SCHEMA_VERSION, Manifest
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import dataset_for_modality

if TYPE_CHECKING:
    import ray.data


def _fs_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).expanduser().resolve()))
    except (pa.ArrowInvalid, ValueError) as exc:
        raise DataError(f"cannot open dataset URI {uri!r}: {exc}") from None


def read_manifest(uri: str) -> Manifest:
    fs, root = _fs_and_path(uri)
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST_NAME}") as handle:
            manifest = Manifest.from_json(handle.read().decode())
    except FileNotFoundError:
        raise DataError(f"{uri}: no {MANIFEST_NAME}; is this a craft-ray dataset directory?") from None
    if manifest.schema_version != SCHEMA_VERSION:
        raise DataError(
            f"{uri}: schema version {manifest.schema_version}, this craft-ray reads {SCHEMA_VERSION}"
        )
    return manifest


def shard_paths(uri: str, split: str) -> tuple[pafs.FileSystem, list[str]]:
    fs, root = _fs_and_path(uri)
    selector = pafs.FileSelector(f"{root}/{split}", allow_not_found=True)
    paths = sorted(info.path for info in fs.get_file_info(selector) if info.path.endswith(".parquet"))
    if not paths:
        known = sorted(read_manifest(uri).counts)
        raise DataError(
            f"{uri}: no shards for split '{split}' (splits present: {', '.join(known) or 'none'})"
        )
    return fs, paths


def read_parquet(uri: str, split: str = "train", columns: Sequence[str] | None = None) -> ray.data.Dataset:
    """A `ray.data.Dataset` over one split's shards (rows of IMAGE_SCHEMA, image as PNG bytes)."""
    import ray.data

    fs, paths = shard_paths(uri, split)
    return ray.data.read_parquet(paths, filesystem=fs, columns=list(columns) if columns else None)


def read_table(uri: str, split: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The whole split as one pyarrow Table (use `columns` to leave the image bytes out)."""
    fs, paths = shard_paths(uri, split)
    return pa.concat_tables(pq.read_table(p, filesystem=fs, columns=columns) for p in paths)


def image_to_tensor(png: bytes, channels: int, resolution: int | None = None) -> torch.Tensor:
    """Stored image bytes -> the model input (C, S, S) float in [0, 1] through the one image path
    (`craft_ray.data.images.prepare_image`: centre square, resized to `resolution` when given)."""
    try:
        return prepare_image(png, channels, resolution)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"stored image bytes cannot be decoded: {exc}") from None


class ImageParquetDataset(Dataset):
    """Map-style torch Dataset over one split, for training workers.

    Metadata (ids, labels, attributes) is loaded up front; image bytes are read one row group
    at a time on demand and kept in a small LRU cache, so a worker's memory does not grow with
    the dataset. Items are dicts: pixel_values (C, H, W) float in [0, 1], label_vector (multi-hot
    over `labels`), labels (names), image_id, index.
    """

    def __init__(
        self,
        uri: str,
        split: str = "train",
        labels: Sequence[str] | None = None,
        resolution: int | None = None,
        channels: int | None = None,
        cache_row_groups: int = 32,
    ):
        self.uri, self.split = uri, split
        self.manifest = read_manifest(uri)
        self.labels = list(labels) if labels else list(self.manifest.label_space)
        unknown = [label for label in self.labels if label not in self.manifest.label_space]
        if unknown:
            raise DataError(
                f"{uri}: label(s) {unknown} not in this dataset (labels: {self.manifest.label_space})"
            )
        self.resolution = resolution
        self.channels = channels
        self._fs, self._paths = shard_paths(uri, split)
        tables, self._locations = [], []
        for file_index, path in enumerate(self._paths):
            pf = pq.ParquetFile(path, filesystem=self._fs)
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                self._locations.extend((file_index, rg, row) for row in range(n))
            tables.append(pf.read(columns=METADATA_COLUMNS))
        self.metadata = pa.concat_tables(tables)
        self._label_lists: list[list[str]] = self.metadata.column("labels").to_pylist()
        self._ids: list[str] = self.metadata.column("image_id").to_pylist()
        self._cache: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()
        self._cache_size = cache_row_groups

    def __len__(self) -> int:
        return len(self._locations)

    def label_sets(self) -> list[list[str]]:
        """Each row's labels restricted to `self.labels` (the label sets a generator is trained on)."""
        keep = set(self.labels)
        return [[label for label in row if label in keep] for row in self._label_lists]

    def attributes(self, index: int) -> dict[str, Any]:
        return json.loads(self.metadata.column("attributes")[index].as_py())

    def _image_bytes(self, index: int) -> bytes:
        file_index, rg, row = self._locations[index]
        key = (file_index, rg)
        if key not in self._cache:
            pf = pq.ParquetFile(self._paths[file_index], filesystem=self._fs)
            self._cache[key] = pf.read_row_group(rg, columns=["image"]).column("image").to_pylist()
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key][row]

    def label_vector(self, index: int) -> torch.Tensor:
        present = set(self._label_lists[index])
        return torch.tensor([1.0 if label in present else 0.0 for label in self.labels])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        channels = self.channels or dataset_for_modality(self.manifest.modality).channels
        return {
            "pixel_values": image_to_tensor(self._image_bytes(index), channels, self.resolution),
            "label_vector": self.label_vector(index),
            "labels": [label for label in self._label_lists[index] if label in set(self.labels)],
            "image_id": self._ids[index],
            "index": index,
        }


def collate_examples(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate: stack tensors, keep label name lists and ids as lists."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "label_vector": torch.stack([e["label_vector"] for e in examples]),
        "labels": [e["labels"] for e in examples],
        "image_id": [e["image_id"] for e in examples],
        "index": torch.tensor([e["index"] for e in examples]),
    }
