"""Phantom datasets: synthetic images of the four modalities with known, stored findings.

Each generator module exposes `patient(rng) -> params` (what stays fixed for a patient: anatomy,
skin tone, stain strength), `image(rng, size, params, defect=None) -> (uint8 array, labels,
attributes)` and `DEFECTS` (the hallucination-like defects it can draw, with the anatomy/realism
items each violates). Image i draws from `default_rng([seed, 0, i])`, patient p from
`default_rng([seed, 1, p])`, an implausible image's defect from `default_rng([seed, 5, i])`
(`defects.choose_defect`), so the output depends only on (seed, n, size, implausible) and is
byte-identical across runs and machines with the same library versions; the labels depend on
(seed, i) alone.

`attributes["items"]` holds per-item ground truth keyed by checklist item id (`<dataset>:<label>:<n>`
for the findings the generator draws, `<modality>:anatomy|realism:<n>` for every image), and an
implausible image has `attributes["implausible"] = {"defect": kind, "violates": [item ids]}`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from craft_ray.data.converters.base import ProgressFn
from craft_ray.data.images import encode_png
from craft_ray.data.phantoms import chest, derm, fundus, histo
from craft_ray.data.phantoms.defects import choose_defect
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


def generate_image(
    modality: str, seed: int, index: int, size: int, implausible: float = 0.0
) -> tuple[np.ndarray, list[str], dict]:
    """One phantom image with its labels and attributes (for tests and interactive use): image
    `index` of `make_phantom_dataset(modality, n, ..., size, seed, implausible=implausible)`."""
    gen = _generator(modality)
    check_share(implausible)
    pid = int(patient_of_image(index + 1, seed)[index])
    return gen.image(
        np.random.default_rng([seed, 0, index]),
        size,
        gen.patient(np.random.default_rng([seed, 1, pid])),
        choose_defect(tuple(gen.DEFECTS), seed, index, implausible),
    )


def check_share(implausible: float) -> None:
    if not 0.0 <= implausible <= 1.0:  # also refuses NaN
        raise ConfigError(f"--implausible must be a share between 0 and 1, got {implausible}")


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
    implausible: float = 0.0,
    implausible_splits: tuple[str, ...] | None = None,
) -> Manifest:
    """Generate `n` phantom images of `modality` into a canonical dataset directory (written under
    a temporary name, renamed into place when complete). A share `implausible` of the images
    carries one hallucination-like defect each (see `defects`); their labels are those of the
    plausible image at the same index. `implausible_splits`: only images of these splits get
    defects (e.g. artefacts in the fine-tuning data while the held-out references stay clean);
    None: every split."""
    gen = _generator(modality)
    check_share(implausible)
    kinds = tuple(gen.DEFECTS)
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
    defects: dict[str, int] = {}
    order: Callable[[str], int] = spec.labels.index
    with (
        atomic_dir(out) as tmp,
        DatasetWriter(tmp, spec.name, spec.modality, list(spec.phantom_labels)) as writer,
    ):
        for i in range(n):
            pid = int(patients[i])
            if pid not in patient_params:
                patient_params = {pid: gen.patient(np.random.default_rng([seed, 1, pid]))}
            in_scope = implausible_splits is None or splits[patient_ids[i]] in implausible_splits
            defect = choose_defect(kinds, seed, i, implausible) if in_scope else None
            pixels, labels, attributes = gen.image(
                np.random.default_rng([seed, 0, i]), size, patient_params[pid], defect
            )
            if "implausible" in attributes:
                kind = attributes["implausible"]["defect"]
                defects[kind] = defects.get(kind, 0) + 1
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
        options = {"seed": seed, "n": n, "size": size, "fractions": fractions}
        if implausible:  # absent when 0, so a plausible dataset's manifest is as before
            options["implausible"] = implausible
            options["defects"] = dict(sorted(defects.items()))
            if implausible_splits is not None:
                options["implausible_splits"] = sorted(implausible_splits)
        manifest = writer.close("phantom", options)
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


__all__ = ["GENERATORS", "check_share", "generate_image", "make_phantom_dataset"]
