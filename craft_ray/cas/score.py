"""The Clinical Alignment Score: CAS = sum_i w_i d_i / sum_i w_i over the four dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from craft_ray.cas.dimensions import (
    AcquisitionRealism,
    AnatomicalPlausibility,
    Batch,
    ChecklistCompliance,
    ItemScorer,
    PathologyFidelity,
    RealismReference,
)
from craft_ray.cas.validation import check_images, check_label_sets
from craft_ray.config import ExperimentConfig
from craft_ray.errors import ScoringError
from craft_ray.knowledge.checklists import ClinicalKnowledge, load_knowledge
from craft_ray.knowledge.labels import get_dataset
from craft_ray.model_names import with_modality
from craft_ray.models.mllm import build_mllm
from craft_ray.models.vlm import VLMScorer, build_vlm

DIMENSIONS = ("pathology", "checklist", "anatomy", "realism")


@dataclass
class CASResult:
    dims: dict[str, torch.Tensor]  # dimension -> (B,) scores in [0, 1]; zero-weight dims are left out
    total: torch.Tensor  # (B,) weighted CAS
    weights: dict[str, float]
    image_emb: torch.Tensor | None = (
        None  # (B, D) the VLM's normalised image embeddings (reward path: with grad)
    )
    # evaluation path: per image, checklist item id -> P(met) of the items the dimensions answered
    item_answers: list[dict[str, float]] | None = None

    def rows(self) -> list[dict[str, float]]:
        """Per-image plain floats: {'cas': ..., 'pathology': ..., ...}."""
        cols = {"cas": self.total, **self.dims}
        values = {k: v.detach().float().cpu().tolist() for k, v in cols.items()}
        return [{k: values[k][i] for k in values} for i in range(len(self.total))]


@dataclass
class EvaluatorSpec:
    """Everything needed to rebuild an evaluator (stored in calibration files)."""

    dataset: str
    labels: list[str] | None = None  # label space scored by pathology fidelity; None = all
    vlm: str = "tiny"
    mllm: str | None = None
    mllm_model: str | None = None
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DIMENSIONS, 1.0))
    checklists: list[str] = field(default_factory=list)  # overlay checklist files

    def __post_init__(self) -> None:
        # 'phantom' / 'phantom-eval': the shipped VLM of the dataset's modality
        self.vlm = with_modality(self.vlm, get_dataset(self.dataset).modality)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(
        cls, cfg: ExperimentConfig, with_mllm: bool = True, checklists: list[str] | None = None
    ) -> EvaluatorSpec:
        """The evaluator an experiment's reward describes: its dataset labels, VLM, MLLM, weights and
        checklist overlays (`reward.checklists`, then any extra `checklists`)."""
        return cls(
            cfg.dataset.name,
            list(cfg.dataset.label_space),
            cfg.model.vlm,
            cfg.model.mllm if with_mllm else None,
            cfg.model.mllm_model if with_mllm else None,
            cfg.reward.effective_weights(),
            [*cfg.reward.checklists, *(checklists or [])],
        )

    def label_space(self) -> list[str]:
        return list(self.labels) if self.labels else list(get_dataset(self.dataset).labels)

    def mismatch(self, other: EvaluatorSpec) -> str | None:
        """How `other` differs from this spec in what a calibration depends on (dataset, VLM,
        label space), or None. Local model paths compare by their resolved location."""

        def model(spec: str) -> str:
            return str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else spec

        differences = []
        if self.dataset != other.dataset:
            differences.append(f"dataset {self.dataset!r} vs {other.dataset!r}")
        if model(self.vlm) != model(other.vlm):
            differences.append(f"vlm {self.vlm!r} vs {other.vlm!r}")
        if set(self.label_space()) != set(other.label_space()):
            differences.append(f"labels {self.label_space()} vs {other.label_space()}")
        return "; ".join(differences) or None


class CASEvaluator:
    def __init__(
        self,
        dataset: str,
        vlm: VLMScorer,
        weights: dict[str, float] | None = None,
        labels: Sequence[str] | None = None,
        knowledge: ClinicalKnowledge | None = None,
        mllm=None,
        reference: RealismReference | None = None,
    ):
        self.spec = get_dataset(dataset)
        self.labels = list(labels) if labels else list(self.spec.labels)
        self.spec.check_labels(self.labels)
        weights = dict(weights or dict.fromkeys(DIMENSIONS, 1.0))
        unknown = sorted(set(weights) - set(DIMENSIONS))
        if unknown or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ScoringError(
                f"CAS weights must be non-negative over {DIMENSIONS} with a positive sum, got {weights}"
            )
        self.weights = {d: float(weights.get(d, 0.0)) for d in DIMENSIONS}
        self.vlm, self.mllm = vlm, mllm
        knowledge = knowledge or load_knowledge()
        items = ItemScorer(vlm, mllm)
        self.realism = AcquisitionRealism(vlm, items, knowledge, self.spec, reference)
        self.dimensions = {
            "pathology": PathologyFidelity(vlm, self.spec, self.labels),
            "checklist": ChecklistCompliance(items, knowledge, self.spec),
            "anatomy": AnatomicalPlausibility(items, knowledge, self.spec.modality),
            "realism": self.realism,
        }

    @property
    def input_size(self) -> int:
        """Side of the square images the VLM sees: the working size every scoring path brings
        images to (`craft_ray.data.images.prepare`), so the VLM itself never resizes them."""
        size = self.vlm.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def reference(self) -> RealismReference | None:
        return self.realism.reference

    @reference.setter
    def reference(self, value: RealismReference | None) -> None:
        self.realism.reference = value

    def score(
        self, images: torch.Tensor, label_sets: Sequence[Sequence[str]], evaluate: bool = False
    ) -> CASResult:
        """Score a batch. evaluate=False: the differentiable reward path; True: the evaluation path
        (no gradient; the MLLM answers checklist questions when one is configured)."""
        check_images(images)
        check_label_sets(label_sets, images.shape[0], self.spec.labels, self.spec.name)
        label_sets = [list(labels) for labels in label_sets]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not evaluate):
            answers: dict[tuple[int, str], float] | None = {} if evaluate else None
            batch = Batch(images, label_sets, self.vlm.embed_images(images), evaluate, answers)
            dims = {name: dim(batch) for name, dim in self.dimensions.items() if self.weights[name] > 0}
            total = sum(self.weights[n] * d for n, d in dims.items()) / sum(self.weights[n] for n in dims)
        per_image = None
        if answers is not None:
            per_image = [{} for _ in label_sets]
            for (row, item_id), p in answers.items():
                per_image[row][item_id] = p
        return CASResult(dims, total, self.weights, batch.image_emb, per_image)

    def to(self, device: torch.device | str) -> CASEvaluator:
        self.vlm.to(device)
        if isinstance(self.mllm, torch.nn.Module):  # a remote MLLM has no device
            self.mllm.to(device)
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        with torch.no_grad():
            return self.vlm.embed_images(images)


def build_evaluator(spec: EvaluatorSpec, reference: RealismReference | None = None) -> CASEvaluator:
    return CASEvaluator(
        spec.dataset,
        build_vlm(spec.vlm),
        spec.weights,
        spec.labels,
        load_knowledge(spec.checklists),
        build_mllm(spec.mllm, spec.mllm_model),
        reference,
    )
