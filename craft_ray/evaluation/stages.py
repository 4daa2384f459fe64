"""The three actor stages of the evaluation pipeline (callable classes for Ray Data `map_batches`).

generate: label-set groups -> PNG images (an actor holds one diffusers pipeline with the run's LoRA)
score:    images -> CAS (evaluation path) and its dimensions, threshold, tail flag, checklist-item
          answers, the memorisation embedding
classify: images -> the out-of-family classifier's label probabilities

Batches travel as pyarrow tables; each stage adds columns. An actor builds its models once.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from craft_ray.cas.calibration import Calibration
from craft_ray.cas.score import DIMENSIONS, build_evaluator
from craft_ray.cas.tail import image_threshold
from craft_ray.data.images import encode_png, resize_square
from craft_ray.data.reading import image_to_tensor
from craft_ray.evaluation.audit import item_probabilities
from craft_ray.evaluation.generation import ImageGenerator, SamplerSettings
from craft_ray.evaluation.memorisation import pixel_embedding
from craft_ray.evaluation.source import ModelSource
from craft_ray.knowledge.labels import get_dataset
from craft_ray.models.classifier import Classifier

GENERATED_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("index", pa.int64()),
        ("shard", pa.int64()),
        ("target_label", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("image", pa.binary()),
    ]
)
SCORE_FIELDS = [
    ("cas", pa.float64()),
    *[(d, pa.float64()) for d in DIMENSIONS],
    ("threshold", pa.float64()),
    ("below_threshold", pa.bool_()),
    ("audit_items", pa.list_(pa.string())),
    ("audit_p", pa.list_(pa.float64())),
    ("embedding", pa.list_(pa.float32())),
]
CLASSIFY_FIELDS = [("oof_prob", pa.list_(pa.float64())), ("oof_agreement", pa.float64())]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _threads(num_threads: int) -> None:
    torch.set_num_threads(max(1, int(num_threads)))


def _fetch(payload: list | dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments arrive as [ObjectRef] (a list, so Ray does not resolve it eagerly), or
    as the dict itself when a stage runs outside Ray (benchmarks, debugging)."""
    if isinstance(payload, dict):
        return payload
    import ray

    return ray.get(payload[0])


def decode_batch(table: pa.Table, channels: int) -> torch.Tensor:
    """The images of a batch through the one image path (`craft_ray.data.images`), at their size."""
    return torch.stack([image_to_tensor(png, channels) for png in table.column("image").to_pylist()])


def _with_columns(
    table: pa.Table, fields: list[tuple[str, pa.DataType]], values: dict[str, list]
) -> pa.Table:
    for name, dtype in fields:
        table = table.append_column(pa.field(name, dtype), pa.array(values[name], type=dtype))
    return table


class GenerateStage:
    def __init__(self, payload: list | dict[str, Any], num_threads: int = 1):
        _threads(num_threads)
        args = _fetch(payload)
        source, sampler = ModelSource.from_dict(args["source"]), SamplerSettings(**args["sampler"])
        self.generator = ImageGenerator(source, sampler, _device())

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = []
        for group in batch.column("rows").to_pylist():
            rows = json.loads(group)
            images, prompts = self.generator.generate([r["labels"] for r in rows], [r["seed"] for r in rows])
            for row, image, prompt in zip(rows, images, prompts, strict=True):
                records.append(
                    {
                        "image_id": row["image_id"],
                        "index": row["index"],
                        "shard": row["shard"],
                        "target_label": row["target_label"],
                        "labels": row["labels"],
                        "seed": row["seed"],
                        "prompt": prompt,
                        "image": encode_png(image),
                    }
                )
        return pa.Table.from_pylist(records, schema=GENERATED_SCHEMA)


class ScoreStage:
    def __init__(self, payload: list | dict[str, Any], num_threads: int = 1):
        _threads(num_threads)
        args = _fetch(payload)
        cal, embedding = Calibration.from_dict(args["calibration"]), args["embedding"]
        self.thresholds = cal.thresholds
        self.evaluator = build_evaluator(cal.evaluator, cal.reference).to(_device())
        self.channels = get_dataset(cal.evaluator.dataset).channels
        self.embedding = embedding

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = decode_batch(batch, self.channels)
        # the evaluator's working size, to which `cas score` and the CAS service bring real images
        images = resize_square(decoded, self.evaluator.input_size).to(_device())
        label_sets = batch.column("labels").to_pylist()
        result = self.evaluator.score(images, label_sets, evaluate=True)
        values: dict[str, list] = {"cas": result.total.float().cpu().tolist()}
        for dim in DIMENSIONS:
            scores = result.dims.get(dim)
            values[dim] = scores.float().cpu().tolist() if scores is not None else [math.nan] * len(images)
        values["threshold"] = [image_threshold(ls, self.thresholds) for ls in label_sets]
        values["below_threshold"] = [  # unknown (null) when no label of the image has a threshold
            None if t is None else bool(c < t)
            for c, t in zip(values["cas"], values["threshold"], strict=True)
        ]
        audit = item_probabilities(self.evaluator, images, label_sets, result.item_answers)
        values["audit_items"] = [[item for item, _ in row] for row in audit]
        values["audit_p"] = [[p for _, p in row] for row in audit]
        emb = self.evaluator.embed(images) if self.embedding == "vlm" else pixel_embedding(decoded)
        values["embedding"] = [e.tolist() for e in emb.float().cpu().numpy()]
        return _with_columns(batch, SCORE_FIELDS, values)


def agreement(
    probs: np.ndarray, label_sets: list[list[str]], labels: list[str], multilabel: bool
) -> list[float]:
    """Out-of-family agreement with the conditioned labels: multi-label, the mean over the classifier's
    labels of P for present and 1 - P for absent ones; single-label, P of the conditioned label."""
    out = []
    for p, label_set in zip(probs, label_sets, strict=True):
        present = np.array([label in label_set for label in labels])
        if multilabel:
            out.append(float(np.where(present, p, 1 - p).mean()))
        else:
            out.append(float(p[present].sum()))
    return out


class ClassifyStage:
    def __init__(self, payload: list | dict[str, Any], num_threads: int = 1):
        _threads(num_threads)
        args = _fetch(payload)
        self.classifier = Classifier.from_bytes(args["card"], args["weights"], _device())
        self.channels = get_dataset(self.classifier.card.dataset).channels

    def __call__(self, batch: pa.Table) -> pa.Table:
        probs = self.classifier.predict_proba(decode_batch(batch, self.channels))
        label_sets = batch.column("labels").to_pylist()
        values = {
            "oof_prob": [p.tolist() for p in probs],
            "oof_agreement": agreement(
                probs, label_sets, self.classifier.labels, self.classifier.card.multilabel
            ),
        }
        return _with_columns(batch, CLASSIFY_FIELDS, values)
