"""The evaluation stage asks the MLLM each checklist question once per image: the checklist audit
reuses the answers the CAS dimensions got (it used to ask them all a second time)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import pyarrow as pa
import pytest
import torch

from craft_ray.cas import EvaluatorSpec
from craft_ray.cas.calibration import Calibration
from craft_ray.cas.dimensions import RealismReference
from craft_ray.data.images import encode_png
from craft_ray.evaluation.audit import items_for
from craft_ray.evaluation.stages import ScoreStage
from craft_ray.knowledge.labels import get_dataset


def _calibration(mllm: str | None) -> dict:
    spec = EvaluatorSpec("chexpert", list(get_dataset("chexpert").phantom_labels), mllm=mllm)
    reference = RealismReference(centroid=[1.0] * 32, mu=0.1, sigma=0.2)
    return asdict(Calibration(spec, 0.05, "d", "test", {}, {}, {}, reference))


@pytest.mark.parametrize("mllm", ["tiny", None])
def test_score_stage_asks_each_item_once_and_the_audit_equals_fresh_answers(mllm):
    stage = ScoreStage({"calibration": _calibration(mllm), "embedding": "pixel"})
    evaluator = stage.evaluator
    asked: Counter = Counter()
    real_p_yes = evaluator.mllm.p_yes if mllm else None  # the object the dimensions' ItemScorer holds
    if mllm:

        def counting_p_yes(images, questions):
            for image, question in zip(images, questions, strict=True):
                asked[(image.mul(255).round().to(torch.uint8).numpy().tobytes(), question)] += 1
            return real_p_yes(images, questions)

        evaluator.mllm.p_yes = counting_p_yes
    generator = torch.Generator().manual_seed(0)
    pixels = [(torch.rand(32, 32, generator=generator) * 255).to(torch.uint8) for _ in range(3)]
    label_sets = [["Cardiomegaly"], ["Pleural Effusion", "Cardiomegaly"], ["No Finding"]]
    batch = pa.table(
        {"image": [encode_png(p.numpy()) for p in pixels], "labels": label_sets},
        schema=pa.schema([("image", pa.binary()), ("labels", pa.list_(pa.string()))]),
    )
    out = stage(batch).to_pylist()

    for row, labels, p in zip(out, label_sets, pixels, strict=True):
        items = items_for(evaluator, labels)
        assert row["audit_items"] == [i.id for i in items]
        image = (p.float() / 255)[None, None]
        with torch.no_grad():  # the reference: each item asked afresh, one at a time
            if mllm:
                expected = [float(real_p_yes(image, [i.question])[0]) for i in items]
            else:
                emb = evaluator.vlm.embed_images(image)
                logit = evaluator.vlm.logits
                expected = [
                    float(torch.sigmoid(logit(emb, [i.present]) - logit(emb, [i.absent]))) for i in items
                ]
        assert row["audit_p"] == pytest.approx(expected, abs=1e-5)
    if mllm:
        assert asked and max(asked.values()) == 1  # no (image, question) asked twice
        expected_rows = sum(len(items_for(evaluator, labels)) for labels in label_sets)
        assert sum(asked.values()) == expected_rows
