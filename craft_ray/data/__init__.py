"""The data layer: canonical parquet format, converters, phantom generators, readers."""

from craft_ray.data.reading import (
    ImageParquetDataset,
    collate_examples,
    image_to_tensor,
    read_manifest,
    read_parquet,
    read_table,
)
from craft_ray.data.schema import IMAGE_SCHEMA, SCHEMA_VERSION, ImageRecord, Manifest

__all__ = [
    "IMAGE_SCHEMA",
    "SCHEMA_VERSION",
    "ImageParquetDataset",
    "ImageRecord",
    "Manifest",
    "collate_examples",
    "image_to_tensor",
    "read_manifest",
    "read_parquet",
    "read_table",
]
