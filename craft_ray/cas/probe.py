"""How easy is a reward to fool? Pixel-space ascent on it, checked by an independent classifier.

For each target label y, real images that do not have y are pushed by signed-gradient ascent
(projected onto an L-infinity ball of radius `eps` around each image, pixels kept in [0, 1]) to
raise the reward of the label set {y} (by default the pathology fidelity, the term that says
which findings an image shows). The same images are read before and after by an independent
classifier (the out-of-family CNN): if the reward rose while the classifier's P(y) stayed put, the
reward's gradient points at something other than the finding, and a generator trained on it can
hack it the same way.

Reported per label: the reward's gain, the classifier's gain in P(y), and their ratio, the
**transfer** (1 = the classifier moves as much as the reward; 0 = the reward is fooled alone),
plus the mean absolute pixel change. With `augment_copies` the ascent follows the reward averaged
over random shifts, rotations, blur and noise (expectation over transformations), which makes
its gradient more semantic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from craft_ray.cas.augment import augment
from craft_ray.config import AugmentConfig
from craft_ray.errors import ConfigError

RewardFn = Callable[[torch.Tensor, list[list[str]]], torch.Tensor]  # images, label sets -> (B,)


@dataclass
class ProbeSettings:
    steps: int = 40
    eps: float = 0.1  # L-infinity budget around each real image
    step_size: float | None = None  # default eps / 8
    augment_copies: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if not 0 < self.eps <= 1:
            raise ConfigError(f"--eps must be in (0, 1], got {self.eps}")
        if self.augment_copies < 0:
            raise ConfigError(f"--augment-copies must be >= 0, got {self.augment_copies}")


@dataclass
class LabelProbe:
    label: str
    n: int
    reward_before: float
    reward_after: float
    classifier_before: float  # mean P(label) by the independent classifier
    classifier_after: float
    pixel_change: float  # mean |x_after - x_before|

    @property
    def reward_gain(self) -> float:
        return self.reward_after - self.reward_before

    @property
    def classifier_gain(self) -> float:
        return self.classifier_after - self.classifier_before

    @property
    def transfer(self) -> float:
        """Classifier gain per unit of reward gain (NaN when the reward did not rise)."""
        return self.classifier_gain / self.reward_gain if self.reward_gain > 1e-6 else float("nan")

    def as_dict(self) -> dict[str, float | str | int]:
        out = asdict(self)
        out.update(reward_gain=self.reward_gain, classifier_gain=self.classifier_gain, transfer=self.transfer)
        return out


def ascend(
    reward: RewardFn, images: torch.Tensor, label_sets: list[list[str]], settings: ProbeSettings
) -> torch.Tensor:
    """Projected signed-gradient ascent of `reward` from `images` (no gradient leaves this function)."""
    step = settings.step_size or settings.eps / 8
    gen = torch.Generator(device=images.device).manual_seed(settings.seed)
    aug = AugmentConfig(copies=settings.augment_copies) if settings.augment_copies else None
    start = images.detach()
    x = start.clone()
    for _ in range(settings.steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            if aug is None:
                value = reward(x, label_sets).sum()
            else:
                value = reward(augment(x, aug, gen), label_sets * aug.copies).sum() / aug.copies
            (grad,) = torch.autograd.grad(value, x)
        with torch.no_grad():
            x = x + step * grad.sign()
            x = torch.minimum(torch.maximum(x, start - settings.eps), start + settings.eps).clamp(0, 1)
    return x.detach()


def probe_label(
    reward: RewardFn,
    classifier_p: Callable[[torch.Tensor], np.ndarray],  # images -> (B, labels) probabilities
    classifier_labels: Sequence[str],
    images: torch.Tensor,
    label: str,
    settings: ProbeSettings,
) -> LabelProbe:
    """Push `images` (none of which has `label`) toward the label set [label]."""
    target = [[label]] * len(images)
    column = list(classifier_labels).index(label)
    with torch.no_grad():
        before = reward(images, target).float().mean().item()
    pushed = ascend(reward, images, target, settings)
    with torch.no_grad():
        after = reward(pushed, target).float().mean().item()
    clf_before = float(np.mean(classifier_p(images)[:, column]))
    clf_after = float(np.mean(classifier_p(pushed)[:, column]))
    change = float((pushed - images).abs().mean())
    return LabelProbe(label, len(images), before, after, clf_before, clf_after, change)


def summarise(rows: list[LabelProbe]) -> dict[str, float]:
    gains = [r.reward_gain for r in rows]
    transfers = [r.transfer for r in rows if r.transfer == r.transfer]
    return {
        "reward_gain_mean": float(np.mean(gains)) if gains else float("nan"),
        "classifier_gain_mean": float(np.mean([r.classifier_gain for r in rows])) if rows else float("nan"),
        "transfer_mean": float(np.mean(transfers)) if transfers else float("nan"),
    }


# -- the probe of a VLM reward on a dataset (`craft cas probe`) ------------------------------


def vlm_reward(vlm, dataset: str, labels: Sequence[str], dimension: str = "pathology") -> RewardFn:
    """The reward a VLM gives a label set: its pathology fidelity (default) or the whole CAS."""
    from craft_ray.cas.dimensions import Batch, PathologyFidelity
    from craft_ray.cas.score import CASEvaluator
    from craft_ray.knowledge.labels import get_dataset

    if dimension == "cas":
        evaluator = CASEvaluator(dataset, vlm, labels=labels)
        return lambda images, label_sets: evaluator.score(images, label_sets).total
    if dimension != "pathology":
        raise ConfigError(f"--dimension must be pathology or cas, got {dimension!r}")
    fidelity = PathologyFidelity(vlm, get_dataset(dataset), labels)
    return lambda images, label_sets: fidelity(Batch(images, label_sets, vlm.embed_images(images), False))


def pick_images(label_sets: Sequence[Sequence[str]], label: str, n: int, seed: int) -> list[int]:
    """Up to n row indices (seeded) of images that do not have `label`."""
    pool = [i for i, ls in enumerate(label_sets) if ls and label not in ls]
    rng = np.random.default_rng([seed, 31, sum(map(ord, label))])
    return sorted(int(i) for i in rng.permutation(pool)[:n])


def probe_dataset(
    reward: RewardFn,
    classifier,  # craft_ray.models.classifier.Classifier
    images: torch.Tensor,
    label_sets: Sequence[Sequence[str]],
    labels: Sequence[str],
    n: int,
    settings: ProbeSettings,
    progress: Callable[[int, int], None] | None = None,
) -> list[LabelProbe]:
    rows = []
    for k, label in enumerate(labels):
        picks = pick_images(label_sets, label, n, settings.seed)
        if picks:
            rows.append(
                probe_label(
                    reward, classifier.predict_proba, classifier.labels, images[picks], label, settings
                )
            )
        if progress:
            progress(k + 1, len(labels))
    return rows
