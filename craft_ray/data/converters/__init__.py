"""Converters from each public dataset layout to the canonical parquet format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from craft_ray.data.converters import chexpert, fundus, histopath, isic
from craft_ray.data.converters.base import ConvertOptions, ParsedSource, ProgressFn, write_dataset
from craft_ray.data.schema import Manifest
from craft_ray.data.writer import check_dataset_output
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import get_dataset

PARSERS: dict[str, Callable[[Path, ConvertOptions], ParsedSource]] = {
    "chexpert": chexpert.parse,
    "isic": isic.parse,
    "fundus": fundus.parse,
    "histopath": histopath.parse,
}


def convert(
    dataset: str,
    source: Path,
    out: Path,
    options: ConvertOptions | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Convert a dataset in its public on-disk layout into canonical parquet shards under `out`
    (written under a temporary name, renamed into place when complete)."""
    spec = get_dataset(dataset)
    source = Path(source)
    check_dataset_output(out, overwrite)
    if not source.is_dir():
        raise DataError(f"source directory not found: {source}")
    options = options or ConvertOptions()
    return write_dataset(spec, PARSERS[dataset](source, options), Path(out), options, progress)


__all__ = ["PARSERS", "ConvertOptions", "convert"]
