"""Phantom datasets: synthetic images of the four modalities with known, stored findings.

Each generator module exposes `patient(rng) -> params` (what stays fixed for a patient: anatomy,
skin tone, stain strength) and `image(rng, size, params) -> (uint8 array, labels, attributes)`.
Image i draws from `default_rng([seed, 0, i])`, patient p from `default_rng([seed, 1, p])`, so the output depends only on (seed, n, size) and is
byte-identical across runs and machines with the same library versions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from craft_ray.data.converters.base import ProgressFn
from craft_ray.data.images import encode_png
from craft_ray.data.phantoms import chest, derm, fundus, histo
from craft_ray.data.schema import ImageRecord, Manifest
from craft_ray.data.splits import DEFAULT_FRACTIONS, assign_splits, check_no_empty_split
from craft_ray.data.writer import DatasetWriter, check_dataset_output
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import dataset_for_modality
from craft_ray.outputs import atomic_dir

GENERATORS: dict[str, ModuleType] = {"chest": chest, "derm": derm, "fundus": fundus, "histo": histo}
MAX_IMAGES_PER_PATIENT = 3


def patient_of_image(n: int, seed: int) -> np.ndarray:
    """Group images into patients of 1-3 images each (a study series), deterministically."""
    sizes = np.random.default_rng([seed, 2]).integers(1, MAX_IMAGES_PER_PATIENT + 1, n)
    return np.repeat(np.arange(n), sizes)[:n]


def generate_image(modality: str, seed: int, index: int, size: int) -> tuple[np.ndarray, list[str], dict]:
    """One phantom image with its labels and attributes (for tests and interactive use)."""
    gen = _generator(modality)
    pid = int(patient_of_image(index + 1, seed)[index])
    return gen.image(
        np.random.default_rng([seed, 0, index]), size, gen.patient(np.random.default_rng([seed, 1, pid]))
    )


def _generator(modality: str) -> ModuleType:
    if modality not in GENERATORS:
        raise ConfigError(f"unknown phantom modality '{modality}' (known: {', '.join(GENERATORS)})")
    return GENERATORS[modality]


def make_phantom_dataset(
    modality: str,
    n: int,
    out: Path,
    size: int = 64,
    seed: int = 0,
    fractions: dict[str, float] | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Generate `n` phantom images of `modality` into a canonical dataset directory (written under
    a temporary name, renamed into place when complete)."""
    gen = _generator(modality)
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if not 16 <= size <= 2048:
        raise ConfigError(f"--size must be between 16 and 2048, got {size}")
    check_dataset_output(out, overwrite)
    spec = dataset_for_modality(modality)
    fractions = fractions or dict(DEFAULT_FRACTIONS)
    patients = patient_of_image(n, seed)
    patient_ids = [f"{modality}-p{p:06d}" for p in patients]
    splits = assign_splits(patient_ids, fractions, seed)
    check_no_empty_split(splits, fractions, f"--n {n} gives {len(set(patient_ids))} patient(s), which")
    patient_params: dict[int, dict] = {}
    order: Callable[[str], int] = spec.labels.index
    with (
        atomic_dir(out) as tmp,
        DatasetWriter(tmp, spec.name, spec.modality, list(spec.phantom_labels)) as writer,
    ):
        for i in range(n):
            pid = int(patients[i])
            if pid not in patient_params:
                patient_params = {pid: gen.patient(np.random.default_rng([seed, 1, pid]))}
            pixels, labels, attributes = gen.image(
                np.random.default_rng([seed, 0, i]), size, patient_params[pid]
            )
            writer.add(
                ImageRecord(
                    image_id=f"{modality}-{seed}-{i:07d}",
                    patient_id=patient_ids[i],
                    split=splits[patient_ids[i]],
                    dataset=spec.name,
                    modality=spec.modality,
                    labels=sorted(labels, key=order),
                    image=encode_png(pixels),
                    width=size,
                    height=size,
                    source="phantom",
                    attributes=_plain(attributes),
                )
            )
            if progress:
                progress(i + 1, n)
        manifest = writer.close("phantom", {"seed": seed, "n": n, "size": size, "fractions": fractions})
    return manifest


def _plain(value):
    """numpy scalars and arrays -> JSON-ready Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["GENERATORS", "generate_image", "make_phantom_dataset"]
