"""The evaluator behind the CAS service: one calibrated (or inline) evaluator per dataset, and
scoring of items gathered from many requests in one pass per dataset and image size."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from craft_ray.cas import DIMENSIONS, Calibration, CASEvaluator, EvaluatorSpec, build_evaluator
from craft_ray.cas.tail import image_threshold
from craft_ray.knowledge.labels import get_dataset
from craft_ray.serving.cas_requests import CASItem
from craft_ray.serving.evaluator_config import DatasetServing
from craft_ray.serving.http_io import ItemFailure


@dataclass
class ServedEvaluator:
    spec: EvaluatorSpec
    evaluator: CASEvaluator
    thresholds: dict[str, float] = field(default_factory=dict)
    calibration: str | None = None

    @classmethod
    def load(cls, dataset: str, served: DatasetServing, device: str = "cpu") -> ServedEvaluator:
        if served.calibration:
            calibration = Calibration.load(served.calibration)
            if calibration.evaluator.dataset != dataset:
                raise ValueError(
                    f"datasets.{dataset}.calibration: {served.calibration} was made for '{calibration.evaluator.dataset}'"
                )
            spec, thresholds = calibration.evaluator, calibration.thresholds
            evaluator = calibration.evaluator_from_spec()
        else:
            spec = EvaluatorSpec(
                dataset,
                served.labels,
                served.vlm,
                served.mllm,
                served.mllm_model,
                served.weights or EvaluatorSpec(dataset).weights,
                list(served.checklists),
            )
            thresholds, evaluator = {}, build_evaluator(spec)
        return cls(spec, evaluator.to(device), thresholds, served.calibration)

    def describe(self) -> dict[str, Any]:
        spec = get_dataset(self.spec.dataset)
        return {
            "modality": spec.modality,
            "labels": list(spec.labels),
            "scored_labels": self.evaluator.labels,
            "multilabel": spec.multilabel,
            "calibrated": bool(self.calibration),
            "thresholds": self.thresholds,
        }

    def result(self, row: dict[str, float], labels: list[str]) -> dict[str, Any]:
        threshold = image_threshold(labels, self.thresholds)
        out: dict[str, Any] = {"cas": row["cas"], **{d: row.get(d) for d in DIMENSIONS}}
        known = threshold is not None  # None: no label of the item has a calibrated threshold
        out["threshold"] = threshold
        out["below_threshold"] = bool(row["cas"] < threshold) if known else None
        return out


Outcome = dict[str, Any] | ItemFailure


def _score_group(served: ServedEvaluator, items: list[CASItem]) -> list[dict[str, Any]]:
    device = next(served.evaluator.vlm.parameters()).device
    images = torch.stack([item.image for item in items]).to(device)
    label_sets = [item.labels for item in items]
    with torch.no_grad():
        rows = served.evaluator.score(images, label_sets, evaluate=True).rows()
    return [served.result(row, labels) for row, labels in zip(rows, label_sets, strict=True)]


def score_items(evaluators: dict[str, ServedEvaluator], jobs: list[tuple[str, CASItem]]) -> list[Outcome]:
    """Outcomes in the order of `jobs`; items of one dataset and image shape share a forward pass.
    When a shared pass fails, its items are scored one by one so that only the item at fault gets
    an `ItemFailure`; an unavailable endpoint fails the group at once (asking again per item would
    only multiply the waiting)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (dataset, item) in enumerate(jobs):
        groups[(dataset, tuple(item.image.shape))].append(i)
    results: list[Outcome] = [ItemFailure("internal", "not scored") for _ in jobs]
    for (dataset, _), members in groups.items():
        served = evaluators[dataset]
        try:
            for i, result in zip(members, _score_group(served, [jobs[i][1] for i in members]), strict=True):
                results[i] = result
            continue
        except Exception as exc:  # noqa: BLE001 - one caller's item must not fail the others
            failure = ItemFailure.of(exc)
        if failure.kind == "unavailable" or len(members) == 1:
            for i in members:
                results[i] = failure
            continue
        for i in members:
            try:
                results[i] = _score_group(served, [jobs[i][1]])[0]
            except Exception as exc:  # noqa: BLE001
                results[i] = ItemFailure.of(exc)
    return results
