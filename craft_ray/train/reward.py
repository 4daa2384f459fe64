"""CRAFT's differentiable training reward: what the gradient path maximises.

- `reward.model: cas` (default): the CAS of the reward VLM (`model.vlm`) with `reward.weights`,
  its reward path. `reward.pathology: log_likelihood` replaces the pathology term (CAS's mean
  P(correct state) over the label space) by the mean log P(correct state): the same optimum, but
  its gradient does not vanish where a finding is confidently absent or present.
- `reward.model: classifier:<dir | phantom-reward>`: an image classifier's P(correct state) per
  label (or its log), the positive control: a classifier reward that cannot move the
  out-of-family classifier means the gradient path is broken; one that can, while the VLM reward
  cannot, points at the VLM's gradient.
- `reward.augment.copies > 0`: the reward averaged over random small shifts, rotations, blur and
  pixel noise (never flips: laterality matters), so a gradient that lives in single pixels (an
  adversarial direction) averages out and what survives is the content.

The CAS evaluation (and calibration) never goes through this module: it scores the images as
they are with the evaluation's own evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from craft_ray.cas.augment import augment
from craft_ray.cas.dimensions import pair_probabilities
from craft_ray.cas.score import CASEvaluator
from craft_ray.config import ExperimentConfig
from craft_ray.models.classifier import Classifier

LOG_FLOOR = 1e-4  # log P is floored here: a saturated sigmoid must not give an infinite reward


@dataclass
class RewardResult:
    total: torch.Tensor  # (B,) per image, with gradient
    dims: dict[str, torch.Tensor]  # (B,) per image, detached: what is logged


def correct_state_probability(probs: torch.Tensor, label_sets, labels: Sequence[str]) -> torch.Tensor:
    """(B, L) P(present) per label -> (B, L) P(the state the label set asks for)."""
    target = torch.tensor(
        [[1.0 if label in ls else 0.0 for label in labels] for ls in label_sets],
        device=probs.device,
        dtype=probs.dtype,
    )
    return target * probs + (1 - target) * (1 - probs)


def _objective(p: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over labels of P(correct) or log P(correct): (B, L) -> (B,)."""
    if kind == "log_likelihood":
        return torch.log(p.clamp(min=LOG_FLOOR)).mean(dim=1)
    return p.mean(dim=1)


class CASReward:
    """The differentiable CAS of the reward VLM, with the pathology term as configured."""

    def __init__(self, evaluator: CASEvaluator, pathology: str):
        self.evaluator, self.pathology = evaluator, pathology

    def __call__(self, images: torch.Tensor, label_sets: list[list[str]]) -> RewardResult:
        result = self.evaluator.score(images, label_sets)
        dims = dict(result.dims)
        if self.pathology != "log_likelihood" or "pathology" not in dims:
            return RewardResult(result.total, {n: d.detach() for n, d in dims.items()})
        fidelity = self.evaluator.dimensions["pathology"]
        probs = pair_probabilities(self.evaluator.vlm, result.image_emb, fidelity.pairs)
        dims["pathology"] = _objective(
            correct_state_probability(probs, label_sets, fidelity.labels), self.pathology
        )
        weights = self.evaluator.weights
        total = sum(weights[n] * d for n, d in dims.items()) / sum(weights[n] for n in dims)
        return RewardResult(total, {n: d.detach() for n, d in dims.items()})


class ClassifierReward:
    """An image classifier's mean P(correct state) (or log) over the labels it shares with the run."""

    def __init__(self, classifier: Classifier, labels: Sequence[str], pathology: str):
        self.classifier, self.pathology = classifier, pathology
        self.labels = [label for label in labels if label in classifier.labels]
        self.columns = [classifier.labels.index(label) for label in self.labels]
        classifier.model.requires_grad_(False)

    def __call__(self, images: torch.Tensor, label_sets: list[list[str]]) -> RewardResult:
        clf = self.classifier
        probs = clf.probabilities(clf.model(clf.prepare(images)))
        if clf.card.multilabel:
            p = correct_state_probability(probs[:, self.columns], label_sets, self.labels)
        else:  # single-label: P of the conditioned class
            index = [clf.labels.index(ls[0]) for ls in label_sets]
            p = probs[torch.arange(len(index)), index][:, None]
        total = _objective(p, self.pathology)
        return RewardResult(total, {"classifier": total.detach()})


class TrainingReward:
    """The configured reward, averaged over augmentations when `reward.augment.copies` > 0."""

    def __init__(self, cfg: ExperimentConfig, scorer: CASReward | ClassifierReward):
        self.cfg, self.scorer = cfg, scorer

    def __call__(
        self, images: torch.Tensor, label_sets: list[list[str]], generator: torch.Generator
    ) -> RewardResult:
        copies = self.cfg.reward.augment.copies
        if copies == 0:
            return self.scorer(images, label_sets)
        b = images.shape[0]
        result = self.scorer(augment(images, self.cfg.reward.augment, generator), list(label_sets) * copies)
        mean = lambda x: x.view(copies, b).mean(dim=0)  # noqa: E731 - copy k of image i is row k * b + i
        return RewardResult(mean(result.total), {n: mean(d) for n, d in result.dims.items()})


def build_training_reward(cfg: ExperimentConfig, evaluator: CASEvaluator | None, device) -> TrainingReward:
    classifier = cfg.reward.classifier
    if classifier is not None:
        from craft_ray.models.classifier import resolve_classifier

        clf = resolve_classifier(classifier, device)
        return TrainingReward(cfg, ClassifierReward(clf, cfg.dataset.label_space, cfg.reward.pathology))
    return TrainingReward(cfg, CASReward(evaluator, cfg.reward.pathology))
