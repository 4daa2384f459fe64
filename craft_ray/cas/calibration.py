"""Real-image reference: per-label CAS thresholds and the realism embedding reference.

`calibrate` scores held-out real images: first their VLM embeddings give the modality's realism
reference (centroid, mean and spread of cosine similarity), then the CAS of each image (evaluation
path, with that reference) gives, per label, the q-quantile threshold tau_y and the distribution.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from craft_ray.cas.dimensions import RealismReference
from craft_ray.cas.score import CASEvaluator, EvaluatorSpec, build_evaluator
from craft_ray.data.reading import ImageParquetDataset, collate_examples, read_table
from craft_ray.errors import ConfigError, DataError
from craft_ray.outputs import write_text_atomic

CALIBRATION_VERSION = 2  # 2: the real images' scores are kept (`real`), for threshold-noise intervals
READABLE_VERSIONS = (1, 2)
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
MIN_IMAGES_PER_LABEL = 20  # below this, a label's low quantile is little more than its minimum
ProgressFn = Callable[..., None]  # (done, total[, what is being counted])


@dataclass
class Calibration:
    evaluator: EvaluatorSpec
    q: float
    data: str
    split: str
    thresholds: dict[str, float]  # label -> q-quantile of real-image CAS
    counts: dict[str, int]  # label -> real images used
    distribution: dict[str, Any]  # overall and per-label summaries of real-image CAS
    reference: RealismReference
    skipped: int = 0  # images without any label of the evaluator's label space
    skipped_reasons: dict[str, int] = field(default_factory=dict)  # NOT_SCORED status -> images
    # the real images' CAS and label sets ({"cas": [...], "labels": [[...], ...]}): the data the
    # thresholds are quantiles of, so intervals can redraw them (None in version-1 files)
    real: dict[str, list] | None = None
    version: int = CALIBRATION_VERSION

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    def thin_labels(self, min_images: int = MIN_IMAGES_PER_LABEL) -> dict[str, int]:
        """Labels whose threshold rests on fewer than `min_images` real images (0: no threshold)."""
        return {label: n for label, n in self.counts.items() if n < min_images}

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"calibration file not found: {path}")
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not {"evaluator", "thresholds", "reference"} <= set(data):
                what = (
                    " (it is a dataset manifest)" if isinstance(data, dict) and "label_space" in data else ""
                )
                raise ConfigError(
                    f"{path} is not a craft-ray calibration file{what}: pass the JSON that "
                    "`craft cas calibrate --out` wrote"
                )
            if data.get("version") not in READABLE_VERSIONS:
                raise ConfigError(
                    f"{path}: calibration version {data.get('version')}, expected one of {READABLE_VERSIONS}"
                )
            return cls.from_dict(data)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError) as exc:
            raise ConfigError(f"{path} is not a craft-ray calibration file ({exc})") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """From `dataclasses.asdict(calibration)` (what `save` writes)."""
        return cls(
            **{
                **data,
                "evaluator": EvaluatorSpec(**data["evaluator"]),
                "reference": RealismReference(**data["reference"]),
            }
        )

    def evaluator_from_spec(self) -> CASEvaluator:
        return build_evaluator(self.evaluator, self.reference)

    def check_matches(self, spec: EvaluatorSpec, path: str | Path, user: str) -> None:
        """Refuse to use this calibration for an evaluator it was not made with: another VLM's
        embeddings or another dataset's images make its realism reference and thresholds meaningless."""
        difference = self.evaluator.mismatch(spec)
        if difference:
            raise ConfigError(
                f"calibration {path} does not match {user}: {difference} (calibration vs {user}); "
                "recalibrate with `craft cas calibrate --config ...`"
            )


@dataclass
class ScoredBatch:
    images: torch.Tensor
    label_sets: list[list[str]]
    image_ids: list[str]
    splits: list[str]


# Why an image gets no CAS (a CAS needs at least one label of the evaluator's label space).
NOT_SCORED = {
    "no_labels": "no positive label",
    "only_uncertain": "only uncertain labels",
    "outside_label_space": "no label in the evaluator's label space",
    "rejected": "rejected on input (file missing or unreadable, unknown label)",
}


@dataclass
class NotScored:
    """An input image that gets no score, with its reason (`status` is a key of NOT_SCORED)."""

    image_id: str
    split: str
    labels: list[str]
    uncertain_labels: list[str]
    status: str
    reason: str


def scoring_status(
    labels: Sequence[str], uncertain: Sequence[str], scored_labels: Sequence[str]
) -> tuple[str, str] | None:
    """(status, reason) when an image with these positive and uncertain labels cannot be scored
    by an evaluator of `scored_labels`; None when it can."""
    if any(label in scored_labels for label in labels):
        return None
    if labels:
        return "outside_label_space", (
            f"labels {list(labels)} are outside the evaluator's label space ({', '.join(scored_labels)})"
        )
    if uncertain:
        return "only_uncertain", f"only uncertain labels ({', '.join(uncertain)}), no positive one"
    return "no_labels", "no positive label"


def iterate_images(
    uri: str,
    splits: Sequence[str],
    labels: Sequence[str],
    batch_size: int,
    limit: int | None = None,
    not_scored: list[NotScored] | None = None,
    size: int | None = None,
) -> Iterator[ScoredBatch]:
    """Batches of images through the one image path (centre square, resized to `size`, the
    evaluator's working size) with their label sets restricted to `labels`. Images that cannot be
    scored are not decoded: each is appended to `not_scored` with its reason. `limit` caps the
    images yielded."""
    seen = 0
    for split in splits:
        dataset = ImageParquetDataset(uri, split, labels=labels, resolution=size)
        meta = dataset.metadata
        keep = []
        for i, (image_id, positive, uncertain) in enumerate(
            zip(
                meta.column("image_id").to_pylist(),
                meta.column("labels").to_pylist(),
                meta.column("uncertain_labels").to_pylist(),
                strict=True,
            )
        ):
            status = scoring_status(positive, uncertain, labels)
            if status is None:
                keep.append(i)
            elif not_scored is not None:
                not_scored.append(NotScored(image_id, split, positive, uncertain, *status))
        if limit is not None:
            keep = keep[: max(0, limit - seen)]
        if not keep:
            continue
        for batch in DataLoader(Subset(dataset, keep), batch_size=batch_size, collate_fn=collate_examples):
            seen += len(batch["labels"])
            yield ScoredBatch(
                batch["pixel_values"], batch["labels"], batch["image_id"], [split] * len(batch["labels"])
            )


def count_scorable(uri: str, splits: Sequence[str], labels: Sequence[str]) -> int:
    """How many images of `splits` have a label of `labels` (progress-bar totals)."""
    total = 0
    for split in splits:
        meta = read_table(uri, split, columns=["labels", "uncertain_labels"])
        for positive, uncertain in zip(
            meta.column("labels").to_pylist(), meta.column("uncertain_labels").to_pylist(), strict=True
        ):
            total += scoring_status(positive, uncertain, labels) is None
    return total


def _summary(values: np.ndarray) -> dict[str, Any]:
    return {
        "n": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": {str(q): float(np.quantile(values, q)) for q in QUANTILES},
    }


def calibrate(
    spec: EvaluatorSpec,
    uri: str,
    split: str = "val",
    q: float = 0.05,
    batch_size: int = 32,
    limit: int | None = None,
    progress: ProgressFn | None = None,
) -> Calibration:
    if not 0.0 < q < 1.0:
        raise ConfigError(f"quantile q must be in (0, 1), got {q}")
    evaluator = build_evaluator(spec)
    labels, size = evaluator.labels, evaluator.input_size
    total = min(count_scorable(uri, [split], labels), limit or 10**12)

    embeddings, skipped = [], []
    for batch in iterate_images(uri, [split], labels, batch_size, limit, skipped, size):
        embeddings.append(evaluator.embed(batch.images))
        if progress:
            progress(sum(len(e) for e in embeddings), total, "embedding real images (1/2)")
    if not embeddings:
        raise DataError(f"{uri} [{split}]: no images with any of the labels {labels}")
    emb = torch.cat(embeddings)
    centroid = torch.nn.functional.normalize(emb.mean(dim=0), dim=0)
    cos = emb @ centroid
    evaluator.reference = RealismReference(
        centroid.tolist(), float(cos.mean()), float(cos.std()) if len(cos) > 1 else 1.0
    )

    scores, label_sets, done = [], [], 0
    for batch in iterate_images(uri, [split], labels, batch_size, limit, size=size):
        scores.extend(evaluator.score(batch.images, batch.label_sets, evaluate=True).total.tolist())
        label_sets.extend(batch.label_sets)
        done += len(batch.label_sets)
        if progress:
            progress(done, len(emb), "scoring real images (2/2)")
    scores_arr = np.asarray(scores)
    thresholds, counts, per_label = {}, {}, {}
    for label in labels:
        values = scores_arr[[label in ls for ls in label_sets]]
        counts[label] = int(len(values))
        if len(values):
            thresholds[label] = float(np.quantile(values, q))
            per_label[label] = _summary(values)
    return Calibration(
        evaluator=spec,
        q=q,
        data=uri,
        split=split,
        thresholds=thresholds,
        counts=counts,
        distribution={"overall": _summary(scores_arr), "per_label": per_label},
        reference=evaluator.reference,
        skipped=len(skipped),
        skipped_reasons=dict(Counter(n.status for n in skipped)),
        real={"cas": [float(x) for x in scores_arr], "labels": [list(ls) for ls in label_sets]},
    )


def score_images(
    evaluator: CASEvaluator,
    uri: str,
    splits: Sequence[str],
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> tuple[list[dict[str, Any]], list[NotScored]]:
    """Evaluation-path scores of every scorable image of a canonical dataset (through the one image
    path at the evaluator's working size); returns (rows, images that got no score with why)."""
    rows: list[dict[str, Any]] = []
    not_scored: list[NotScored] = []
    total = count_scorable(uri, splits, evaluator.labels)
    batches = iterate_images(
        uri, splits, evaluator.labels, batch_size, not_scored=not_scored, size=evaluator.input_size
    )
    for batch in batches:
        result = evaluator.score(batch.images, batch.label_sets, evaluate=True)
        for image_id, split, labels, scores in zip(
            batch.image_ids, batch.splits, batch.label_sets, result.rows(), strict=True
        ):
            rows.append({"image_id": image_id, "split": split, "labels": labels, **scores})
        if progress:
            progress(len(rows), total)
    return rows, not_scored
