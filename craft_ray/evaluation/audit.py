"""Checklist audit: P(criterion met) for every checklist item that applies to an image.

The items of an image are those of its labels plus its modality's anatomy and realism checklists
(the CAS checklist, anatomy and realism dimensions average them). The answer comes from the
evaluator's MLLM (its P(yes) to the item's question) when one is configured, else from the VLM
surrogate (the present/absent phrase pair), and `audit_path` says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


@torch.no_grad()
def item_probabilities(
    evaluator: CASEvaluator,
    images: torch.Tensor,
    label_sets: Sequence[Sequence[str]],
    known: Sequence[Mapping[str, float]] | None = None,
) -> list[list[tuple[str, float]]]:
    """Per image: (item id, P(met)) for each of its checklist items. `known`: per image, answers
    already given while scoring (`CASResult.item_answers`); only the items they lack are asked."""
    per_image = [items_for(evaluator, labels) for labels in label_sets]
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
