"""Patient-level splits: every image of a patient lands in the same split."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from craft_ray.errors import ConfigError

DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def parse_fractions(text: str) -> dict[str, float]:
    """'train=0.8,val=0.1,test=0.1' -> dict; fractions must be positive and sum to 1."""
    fractions: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"split fractions: expected name=fraction, got {part!r} in {text!r}")
        try:
            fractions[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"split fractions: {value!r} is not a number (in {text!r})") from None
    check_fractions(fractions)
    return fractions


def check_fractions(fractions: dict[str, float]) -> None:
    if not fractions or any(f < 0 for f in fractions.values()):
        raise ConfigError(f"split fractions must be non-negative, got {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must sum to 1, got {sum(fractions.values()):.4f} ({fractions})")


def assign_splits(patient_ids: Iterable[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Map each distinct patient to a split: a seeded permutation of the sorted ids, cut by fraction.

    Deterministic for a given set of ids and seed, whatever order the ids arrive in.
    """
    check_fractions(fractions)
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    names = list(fractions)
    bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(patients)).astype(int)
    assignment: dict[str, str] = {}
    start = 0
    for name, stop in zip(names, bounds, strict=True):
        for idx in order[start:stop]:
            assignment[patients[idx]] = name
        start = stop
    return assignment


def check_no_empty_split(assignment: dict[str, str], fractions: dict[str, float], what: str) -> None:
    """Refuse before any work when a split with a positive fraction would get no patient."""
    empty = [name for name, f in fractions.items() if f > 0 and name not in set(assignment.values())]
    if empty:
        wanted = ",".join(f"{k}={v:g}" for k, v in fractions.items())
        raise ConfigError(
            f"{what} leave split(s) {', '.join(empty)} empty with fractions {wanted}: "
            "use more images or other --splits"
        )
