"""Checklist audit: P(criterion met) for every checklist item that applies to an image.

The items of an image are those of its labels plus its modality's anatomy and realism checklists
(the CAS checklist, anatomy and realism dimensions average them). The answer comes from the
evaluator's MLLM (its P(yes) to the item's question) when one is configured, else from the VLM
surrogate (the present/absent phrase pair), and `audit_path` says which.

`craft evaluate` (per generated image, `stages`) and the report's checklist audit
(`metrics.audit_table`: the pass rate of each item over the images it applies to) use this module,
and so does `craft cas audit`, which also asks every item with ground truth (phantoms record it in
`attributes["items"]`) on every image and reports the item-level AUROC against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from craft_ray.cas.dimensions import pair_probabilities
from craft_ray.cas.score import CASEvaluator
from craft_ray.knowledge.checklists import ChecklistItem


def audit_path(evaluator: CASEvaluator) -> str:
    return "mllm" if evaluator.mllm is not None else "vlm-surrogate"


def items_for(evaluator: CASEvaluator, labels: Sequence[str]) -> list[ChecklistItem]:
    knowledge = evaluator.dimensions["checklist"].knowledge
    per_label = [i for label in labels for i in knowledge.for_label(evaluator.spec.name, label)]
    return [*per_label, *evaluator.dimensions["anatomy"].checklist, *evaluator.realism.checklist]


STATIC_SOURCE = "checklists.yaml"  # item ground truth (phantoms) refers to the static base's items


def known_items(evaluator: CASEvaluator) -> dict[str, ChecklistItem]:
    """Every item of the static knowledge base the evaluator asks for its dataset and modality, by
    id (an overlay that replaced a label's items reuses the ids for other questions: no ground
    truth applies to those)."""
    knowledge = evaluator.dimensions["checklist"].knowledge
    items = {i.id: i for label in evaluator.spec.labels for i in _label_items(knowledge, evaluator, label)}
    for item in (*evaluator.dimensions["anatomy"].checklist, *evaluator.realism.checklist):
        items[item.id] = item
    return {k: v for k, v in items.items() if v.source == STATIC_SOURCE}


def _label_items(knowledge, evaluator: CASEvaluator, label: str) -> list[ChecklistItem]:
    return knowledge.label_items.get((evaluator.spec.name, label), [])


@torch.no_grad()
def item_probabilities(
    evaluator: CASEvaluator,
    images: torch.Tensor,
    label_sets: Sequence[Sequence[str]],
    known: Sequence[Mapping[str, float]] | None = None,
    items_per_image: Sequence[Sequence[ChecklistItem]] | None = None,
) -> list[list[tuple[str, float]]]:
    """Per image: (item id, P(met)) for each of its checklist items (`items_for` its labels unless
    `items_per_image` names them). `known`: per image, answers already given while scoring
    (`CASResult.item_answers`); only the items they lack are asked."""
    per_image = (
        [list(items) for items in items_per_image]
        if items_per_image is not None
        else [items_for(evaluator, labels) for labels in label_sets]
    )
    known = known if known is not None else [{} for _ in per_image]
    missing = [(r, item) for r, items in enumerate(per_image) for item in items if item.id not in known[r]]
    asked = _ask(evaluator, images, missing)
    out: list[list[tuple[str, float]]] = [[] for _ in per_image]
    for r, items in enumerate(per_image):
        for item in items:
            p = known[r][item.id] if item.id in known[r] else asked[(r, item.id)]
            out[r].append((item.id, float(p)))
    return out


def _ask(
    evaluator: CASEvaluator, images: torch.Tensor, wanted: list[tuple[int, ChecklistItem]]
) -> dict[tuple[int, str], float]:
    if not wanted:
        return {}
    unique = list(dict.fromkeys(item for _, item in wanted))
    column = {item.id: j for j, item in enumerate(unique)}
    rows = [r for r, _ in wanted]
    cols = [column[item.id] for _, item in wanted]
    if evaluator.mllm is not None:
        answers = evaluator.mllm.p_yes(
            images[torch.tensor(rows, device=images.device)], [unique[c].question for c in cols]
        )
        flat = answers.float().cpu().tolist()
    else:
        emb = evaluator.vlm.embed_images(images)
        probs = pair_probabilities(evaluator.vlm, emb, [(i.present, i.absent) for i in unique]).float().cpu()
        flat = probs[rows, cols].tolist()
    return {(r, unique[c].id): float(p) for r, c, p in zip(rows, cols, flat, strict=True)}


@dataclass
class AuditedImage:
    image_id: str
    labels: list[str]
    p: dict[str, float]  # item id -> P(met), for every item asked
    applies: list[str]  # the items of its labels and modality (what the pass rates count)
    truth: dict[str, bool] = field(default_factory=dict)  # item ground truth, where the data has it


def audit_batch(
    evaluator: CASEvaluator,
    images: torch.Tensor,
    label_sets: Sequence[Sequence[str]],
    image_ids: Sequence[str],
    truths: Sequence[Mapping[str, bool]] | None = None,
) -> list[AuditedImage]:
    """Ask each image its applicable items and every item it has ground truth for."""
    known = known_items(evaluator)
    truths = [dict(t) for t in truths] if truths is not None else [{} for _ in label_sets]
    applies = [items_for(evaluator, labels) for labels in label_sets]
    asked = [
        list({**{i.id: i for i in items}, **{k: known[k] for k in truth if k in known}}.values())
        for items, truth in zip(applies, truths, strict=True)
    ]
    answers = item_probabilities(evaluator, images, label_sets, items_per_image=asked)
    return [
        AuditedImage(
            image_id,
            list(labels),
            dict(answer),
            [i.id for i in items],
            {k: bool(v) for k, v in truth.items() if k in known},
        )
        for image_id, labels, answer, items, truth in zip(
            image_ids, label_sets, answers, applies, truths, strict=True
        )
    ]


def ground_truth_table(audited: Sequence[AuditedImage]) -> dict[str, dict]:
    """Per item with ground truth: how many images, how many met, the AUROC of P(met) against the
    truth (None without both answers) and the accuracy of P(met) > 0.5."""
    from craft_ray.evaluation.stats import auroc

    scores: dict[str, list[tuple[float, bool]]] = {}
    for image in audited:
        for item, met in image.truth.items():
            if item in image.p:
                scores.setdefault(item, []).append((image.p[item], met))
    table = {}
    for item, pairs in scores.items():
        p = np.array([x for x, _ in pairs])
        t = np.array([y for _, y in pairs], dtype=bool)
        value = auroc(t.astype(float), p)
        table[item] = {
            "n": len(pairs),
            "met": int(t.sum()),
            "auroc": None if math.isnan(value) else value,
            "accuracy": float(((p > 0.5) == t).mean()),
        }
    return table


def audit_report(
    audited: Sequence[AuditedImage],
    questions: Mapping[str, str],
    path: str,
    model: str,
    level: float = 0.95,
) -> dict:
    """The audit as JSON-ready data: per item the report's pass rate over the images it applies to
    (`metrics.audit_table`, the same numbers `craft evaluate` reports) and, where the data has item
    ground truth, its AUROC and accuracy; then every image's answers."""
    from craft_ray.evaluation.metrics import audit_table

    passes = audit_table(
        [[i for i in image.applies if i in image.p] for image in audited],
        [[image.p[i] for i in image.applies if i in image.p] for image in audited],
        questions,
        path,
        level,
    )
    truth = ground_truth_table(audited)
    items = {}
    for item in dict.fromkeys([*passes["items"], *truth]):
        row = dict(passes["items"].get(item, {"question": questions.get(item, item), "n": 0}))
        if item in truth:
            row["ground_truth"] = truth[item]
        items[item] = row
    drawn = [row["auroc"] for row in truth.values() if row["auroc"] is not None]
    return {
        "path": path,
        "model": model,
        "n_images": len(audited),
        "ground_truth": bool(truth),
        "item_auroc_min": min(drawn) if drawn else None,
        "item_auroc_mean": float(np.mean(drawn)) if drawn else None,
        "items": items,
        "images": [
            {"image_id": i.image_id, "labels": i.labels, "p": i.p, **({"truth": i.truth} if i.truth else {})}
            for i in audited
        ],
    }


def audit_in_batches(
    evaluator: CASEvaluator,
    batches,
    progress: Callable[[int, int], None] | None = None,
    total: int | None = None,
) -> list[AuditedImage]:
    """`batches` yields (images, label_sets, image_ids, truths or None)."""
    audited: list[AuditedImage] = []
    for images, label_sets, image_ids, truths in batches:
        audited += audit_batch(evaluator, images, label_sets, image_ids, truths)
        if progress:
            progress(len(audited), total or len(audited))
    return audited
