"""Reading canonical datasets back: torch Dataset for workers, Ray Dataset for batch jobs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from craft_ray.data import ImageParquetDataset, collate_examples, read_manifest, read_parquet, read_table
from craft_ray.data.images import decode_png
from craft_ray.errors import DataError


def test_torch_dataset_decodes_to_float_tensors(phantom_root):
    uri = str(phantom_root / "chest")
    ds = ImageParquetDataset(uri, "train", labels=["Cardiomegaly", "No Finding"], resolution=16)
    table = read_table(uri, "train")
    assert len(ds) == table.num_rows > 0
    item = ds[0]
    assert item["pixel_values"].shape == (1, 16, 16) and item["pixel_values"].dtype == torch.float32
    assert 0.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    row = table.slice(0, 1).to_pylist()[0]
    assert item["image_id"] == row["image_id"]
    expected = [1.0 if name in row["labels"] else 0.0 for name in ["Cardiomegaly", "No Finding"]]
    assert item["label_vector"].tolist() == expected
    full = ImageParquetDataset(uri, "train")
    original = torch.from_numpy(decode_png(row["image"])).permute(2, 0, 1).float() / 255
    assert torch.allclose(full[0]["pixel_values"], original)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_examples)))
    assert batch["pixel_values"].shape == (4, 1, 16, 16) and len(batch["labels"]) == 4


def test_rgb_dataset_and_label_errors(phantom_root):
    uri = str(phantom_root / "fundus")
    assert ImageParquetDataset(uri, "val")[0]["pixel_values"].shape[0] == 3
    with pytest.raises(DataError, match=r"label\(s\) \['MEL'\] not in this dataset"):
        ImageParquetDataset(uri, "train", labels=["MEL"])
    with pytest.raises(DataError, match="no shards for split 'holdout'"):
        ImageParquetDataset(uri, "holdout")
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(str(phantom_root))
    with pytest.raises(IndexError):
        ImageParquetDataset(uri, "val")[10_000]


@pytest.mark.slow
def test_ray_data_reads_the_same_rows(phantom_root, ray_local):
    uri = str(phantom_root / "histo")
    rows = read_parquet(uri, "train", columns=["image_id", "labels"]).take_all()
    table = read_table(uri, "train", columns=["image_id", "labels"])
    assert sorted(r["image_id"] for r in rows) == sorted(table.column("image_id").to_pylist())
    counts = read_manifest(uri).counts["train"]
    assert len(rows) == counts["images"]
