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


def score_items(
    evaluators: dict[str, ServedEvaluator], jobs: list[tuple[str, CASItem]]
) -> list[dict[str, Any]]:
    """Results in the order of `jobs`; items of one dataset and image shape share a forward pass."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (dataset, item) in enumerate(jobs):
        groups[(dataset, tuple(item.image.shape))].append(i)
    results: list[dict[str, Any]] = [{} for _ in jobs]
    for (dataset, _), members in groups.items():
        served = evaluators[dataset]
        device = next(served.evaluator.vlm.parameters()).device
        images = torch.stack([jobs[i][1].image for i in members]).to(device)
        label_sets = [jobs[i][1].labels for i in members]
        with torch.no_grad():
            rows = served.evaluator.score(images, label_sets, evaluate=True).rows()
        for i, row, labels in zip(members, rows, label_sets, strict=True):
            results[i] = served.result(row, labels)
    return results
