"""What an evaluation generates: label sets drawn from a real split, a seed per image, shards.

For each evaluated label y, `n_per_label` label sets are drawn (with replacement, seeded) from the
label sets of the real split's images that have y (restricted to the evaluated labels), so a
multi-label dataset keeps its co-occurrences ("Pleural Effusion" often comes with "Support
Devices"). A label with no real image in the split is generated alone (and the plan says so).
Row i's seed depends only on (evaluation seed, i, stream): every run evaluated with the same settings
gets the same label sets and seeds, which makes run-to-run comparisons paired.

Streams keep selection and final evaluation apart: `craft evaluate` draws from the `evaluate`
stream, sweep validation (which picks the trial that is then evaluated) from `validate`. The two
never share an image seed, whatever the seed values: `evaluate` seeds lie in [0, 2^31) and
`validate` seeds in [2^31, 2^32), so an image that chose a trial is never one that grades it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from craft_ray.errors import EvaluationError


@dataclass(frozen=True)
class PlanRow:
    index: int
    image_id: str
    target_label: str  # the label this image was drawn for
    labels: list[str]  # the label set it is conditioned on
    seed: int
    shard: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    rows: list[PlanRow]
    shard_size: int
    batch_size: int
    notes: list[str]

    def digest(self) -> str:
        """sha256 (16 hex) of every row and the shard and batch sizes: what a shard was generated for."""
        rows = [r.as_dict() for r in self.rows]
        text = json.dumps({"rows": rows, "shard_size": self.shard_size, "batch_size": self.batch_size})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def n_shards(self) -> int:
        return -(-len(self.rows) // self.shard_size)

    def shard_rows(self, shard: int) -> list[PlanRow]:
        return self.rows[shard * self.shard_size : (shard + 1) * self.shard_size]

    def groups(self, shards: Sequence[int]) -> list[list[PlanRow]]:
        """Generation batches of the given shards: fixed groups of `batch_size` consecutive rows, so an
        image is always generated beside the same neighbours (batching can move floats otherwise)."""
        out = []
        for shard in shards:
            rows = self.shard_rows(shard)
            out.extend(rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size))
        return out


STREAMS = {"evaluate": 0, "validate": 1}  # the stream's number is the seed's bit 31 and up


def _stream(stream: str) -> int:
    if stream not in STREAMS:
        raise EvaluationError(f"unknown seed stream {stream!r} (known: {', '.join(STREAMS)})")
    return STREAMS[stream]


def _entropy(stream: str, *parts: int) -> list[int]:
    # the `evaluate` stream keeps the entropy it always had, so earlier evaluations reproduce
    number = _stream(stream)
    return [int(p) for p in parts] + ([number] if number else [])


def image_seed(seed: int, index: int, stream: str = "evaluate") -> int:
    """The seed of image `index`: 31 bits drawn from (seed, index, stream), in the stream's own range."""
    low = int(np.random.SeedSequence(_entropy(stream, seed, 11, index)).generate_state(1)[0] & 0x7FFFFFFF)
    return (_stream(stream) << 31) | low


def make_plan(
    real_label_sets: Sequence[Sequence[str]],
    labels: Sequence[str],
    n_per_label: int,
    seed: int,
    shard_size: int,
    batch_size: int,
    stream: str = "evaluate",
) -> Plan:
    if n_per_label < 1:
        raise EvaluationError(f"--n-per-label must be at least 1, got {n_per_label}")
    if not labels:
        raise EvaluationError("no labels to evaluate")
    order = {label: j for j, label in enumerate(labels)}
    restricted = [sorted((x for x in ls if x in order), key=order.get) for ls in real_label_sets]
    rows, notes = [], []
    for j, label in enumerate(labels):
        pool = [ls for ls in restricted if label in ls]
        if pool:
            picks = np.random.default_rng(_entropy(stream, seed, 7, j)).integers(0, len(pool), n_per_label)
            chosen = [list(pool[int(p)]) for p in picks]
        else:
            chosen = [[label]] * n_per_label
            notes.append(f"no real image with '{label}' in the split: its images are conditioned on it alone")
        for label_set in chosen:
            index = len(rows)
            rows.append(
                PlanRow(
                    index=index,
                    image_id=f"gen-{index:06d}",
                    target_label=label,
                    labels=label_set,
                    seed=image_seed(seed, index, stream),
                    shard=index // shard_size,
                )
            )
    return Plan(rows, shard_size, batch_size, notes)
