"""The four CAS dimensions. Each maps a batch to scores in [0, 1] per image.

Reward path (differentiable in the pixels): CLIP-style phrase pairs, P(met) = softmax over
(present, absent) similarities. Evaluation path: the same, or the MLLM's P(yes) for the
checklist questions when an MLLM is configured (not differentiable when remote).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from craft_ray.knowledge.checklists import ChecklistItem, ClinicalKnowledge
from craft_ray.knowledge.labels import MODALITIES, DatasetSpec
from craft_ray.knowledge.prompts import finding_pair
from craft_ray.models.vlm import VLMScorer

DISTRACTORS = (
    "a photograph of a natural scene",
    "a cartoon drawing",
    "a screenshot of text",
    "a blank grey image",
)


@dataclass
class Batch:
    images: torch.Tensor  # (B, C, H, W) in [0, 1]
    label_sets: list[list[str]]
    image_emb: torch.Tensor  # (B, D) normalised VLM embeddings
    evaluate: bool  # evaluation path (MLLM where available) instead of the reward path
    # evaluation path: (row, checklist item id) -> P(met) of every item answered, so the checklist
    # audit reuses the answers instead of asking the MLLM the same questions again
    answers: dict[tuple[int, str], float] | None = None


def pair_probabilities(
    vlm: VLMScorer, image_emb: torch.Tensor, pairs: Sequence[tuple[str, str]]
) -> torch.Tensor:
    """(B, len(pairs)): P(present) from a two-way softmax of the present/absent similarities."""
    present = vlm.logits(image_emb, [p for p, _ in pairs])
    absent = vlm.logits(image_emb, [a for _, a in pairs])
    return torch.sigmoid(present - absent)


class ItemScorer:
    """Mean P(criterion met) over each image's checklist items (which may differ per image)."""

    def __init__(self, vlm: VLMScorer, mllm=None):
        self.vlm, self.mllm = vlm, mllm

    def __call__(self, batch: Batch, items_per_image: list[list[ChecklistItem]]) -> torch.Tensor:
        unique = list(dict.fromkeys(i for items in items_per_image for i in items))
        column = {item.id: j for j, item in enumerate(unique)}
        mask = torch.zeros(len(items_per_image), len(unique), device=batch.image_emb.device)
        for row, items in enumerate(items_per_image):
            mask[row, [column[i.id] for i in items]] = 1.0
        if batch.evaluate and self.mllm is not None:
            rows, cols = mask.nonzero(as_tuple=True)
            answers = self.mllm.p_yes(
                batch.images[rows.to(batch.images.device)], [unique[c].question for c in cols.tolist()]
            )
            probs = torch.zeros_like(mask)
            probs[rows, cols] = answers.to(probs.device, probs.dtype)
        else:
            probs = pair_probabilities(self.vlm, batch.image_emb, [(i.present, i.absent) for i in unique])
        if batch.answers is not None:
            rows, cols = mask.nonzero(as_tuple=True)
            values = probs.detach()[rows, cols].float().cpu().tolist()
            for row, col, p in zip(rows.tolist(), cols.tolist(), values, strict=True):
                batch.answers[(row, unique[col].id)] = p
        return (probs * mask).sum(dim=1) / mask.sum(dim=1)


class PathologyFidelity:
    """Are the conditioned findings present and the others absent? Mean over the label space."""

    name = "pathology"

    def __init__(self, vlm: VLMScorer, spec: DatasetSpec, labels: Sequence[str]):
        self.vlm, self.labels = vlm, list(labels)
        self.pairs = [finding_pair(spec, label) for label in self.labels]

    def __call__(self, batch: Batch) -> torch.Tensor:
        probs = pair_probabilities(self.vlm, batch.image_emb, self.pairs)
        target = torch.tensor(
            [[1.0 if label in labels else 0.0 for label in self.labels] for labels in batch.label_sets],
            device=probs.device,
            dtype=probs.dtype,
        )
        return (target * probs + (1 - target) * (1 - probs)).mean(dim=1)


class ChecklistCompliance:
    """Does the image meet the clinical checklist of each of its labels?"""

    name = "checklist"

    def __init__(self, items: ItemScorer, knowledge: ClinicalKnowledge, spec: DatasetSpec):
        self.items, self.knowledge, self.spec = items, knowledge, spec

    def __call__(self, batch: Batch) -> torch.Tensor:
        per_image = [
            [i for label in labels for i in self.knowledge.for_label(self.spec.name, label)]
            for labels in batch.label_sets
        ]
        return self.items(batch, per_image)


class AnatomicalPlausibility:
    """Is the anatomy of the modality plausible (organs, symmetry, laterality, no duplicated parts)?"""

    name = "anatomy"

    def __init__(self, items: ItemScorer, knowledge: ClinicalKnowledge, modality: str):
        self.items, self.checklist = items, knowledge.anatomy(modality)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.items(batch, [self.checklist] * len(batch.label_sets))


@dataclass
class RealismReference:
    """Real-image embedding statistics of one modality (from calibration)."""

    centroid: list[float]
    mu: float  # mean cosine similarity of real images to the centroid
    sigma: float  # its standard deviation

    def closeness(self, image_emb: torch.Tensor) -> torch.Tensor:
        centroid = torch.tensor(self.centroid, device=image_emb.device, dtype=image_emb.dtype)
        z = (image_emb @ torch.nn.functional.normalize(centroid, dim=0) - self.mu) / max(self.sigma, 1e-6)
        return torch.sigmoid(2.0 * (z + 2.0))  # 0.98 at the real mean, 0.5 two SDs below


class AcquisitionRealism:
    """A plausible acquisition of the modality, free of non-clinical artefacts.

    Mean of: P(modality) against distractor prompts (other modalities, natural scenes, drawings,
    text); the modality's realism checklist; closeness to real-image embeddings (when calibrated);
    and, for greyscale modalities, the absence of colour.
    """

    name = "realism"

    def __init__(
        self,
        vlm: VLMScorer,
        items: ItemScorer,
        knowledge: ClinicalKnowledge,
        spec: DatasetSpec,
        reference: RealismReference | None = None,
    ):
        self.vlm, self.items, self.spec, self.reference = vlm, items, spec, reference
        self.checklist = knowledge.realism(spec.modality)
        others = [s.modality_phrase for s in MODALITIES.values() if s.modality != spec.modality]
        self.prompts = [spec.modality_phrase, *others, *DISTRACTORS]

    def __call__(self, batch: Batch) -> torch.Tensor:
        parts = [
            self.vlm.logits(batch.image_emb, self.prompts).softmax(dim=-1)[:, 0],
            self.items(batch, [self.checklist] * len(batch.label_sets)),
        ]
        if self.reference is not None:
            parts.append(self.reference.closeness(batch.image_emb))
        if self.spec.channels == 1:
            chroma = (batch.images.amax(dim=1) - batch.images.amin(dim=1)).mean(dim=(1, 2))
            parts.append(torch.exp(-chroma.to(parts[0].device, parts[0].dtype) / 0.05))
        return torch.stack(parts, dim=1).mean(dim=1)
