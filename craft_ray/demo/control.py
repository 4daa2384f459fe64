"""The positive control of CRAFT's reward (`craft control`): does a reward's gradient teach the
generator a finding that an independent classifier then reads?

For each target finding and each reward, a short CRAFT run from the diffusion base on images of
that finding alone (the label space narrowed to it, so every prompt asks for it) maximises the
reward's P(finding present); then images generated from the same initial noise before and after
are read by the out-of-family classifier. Rewards:

- `classifier`: an image classifier trained on data the out-of-family classifier never saw
  (`phantom-reward:<modality>`). If even it cannot move the out-of-family classifier, the gradient
  path is broken.
- `vlm`: the reward VLM's pathology fidelity (`model.vlm`). If the classifier reward moves the
  out-of-family classifier and this does not, the VLM's gradient is the problem (it is hacked).
- `vlm-augmented`: the same, averaged over `reward.augment` copies (shifts, rotations, blur,
  noise): does averaging make its gradient more semantic?

Each run is small (in-process, one worker, no Ray): it is a diagnostic, not a result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from craft_ray.config import ExperimentConfig, validate_config
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import get_dataset

REWARDS = ("classifier", "vlm", "vlm-augmented")


@dataclass
class ControlSettings:
    dataset: str = "chexpert"
    base: str = "phantom"
    vlm: str = "phantom"  # the reward VLM (resolved to the dataset's modality)
    reward_classifier: str = "phantom-reward"
    evaluator: str = "phantom"  # the out-of-family classifier
    steps: int = 30
    sampler_steps: int = 4  # T = K: the whole chain on the graph
    learning_rate: float = 3e-3
    images: int = 16  # per target: images before and after, from the same seeds
    n_data: int = 200  # phantoms the runs draw their prompts from
    resolution: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.sampler_steps < 1 or self.images < 2 or self.n_data < 20:
            raise ConfigError("control: steps and sampler steps >= 1, images >= 2, data >= 20")


@dataclass
class ControlRow:
    target: str
    reward: str
    reward_first: float  # mean training reward of the first and last 5 steps
    reward_last: float
    p_before: float  # the out-of-family classifier's mean P(target) on the images before / after
    p_after: float
    paired_wins: int  # images whose P(target) rose, of `images`
    images: int

    @property
    def moved(self) -> float:
        return self.p_after - self.p_before


def control_config(
    settings: ControlSettings, data: Path, target: str, reward: str, out: Path
) -> ExperimentConfig:
    rewards = {
        "classifier": {"model": f"classifier:{settings.reward_classifier}"},
        "vlm": {"weights": {"pathology": 1, "checklist": 0, "anatomy": 0, "realism": 0}},
        "vlm-augmented": {
            "weights": {"pathology": 1, "checklist": 0, "anatomy": 0, "realism": 0},
            "augment": {"copies": 4},
        },
    }
    if reward not in rewards:
        raise ConfigError(f"control: unknown reward {reward!r} (known: {', '.join(REWARDS)})")
    t = settings.sampler_steps
    return validate_config(
        {
            "name": f"control-{reward}",
            "method": "craft",
            "seed": settings.seed,
            "dataset": {
                "name": settings.dataset,
                "uri": str(data),
                "resolution": settings.resolution,
                "labels": [target],
            },
            "model": {"base": settings.base, "vlm": settings.vlm},
            "reward": rewards[reward],
            "training": {
                "steps": settings.steps,
                "sampler_steps": t,
                "backprop_steps": t,
                "learning_rate": settings.learning_rate,
                "batch_size": 2,
                "checkpoint_every": settings.steps,
                "report_every": settings.steps,
                "guidance_scale": 3.0,
            },
            "storage": {"path": str(out)},
        },
        source="craft control",
    )


def run_control(
    settings: ControlSettings,
    targets: Sequence[str],
    rewards: Sequence[str] = REWARDS,
    progress: Callable[[str], None] | None = None,
) -> list[ControlRow]:
    from craft_ray.data.phantoms import make_phantom_dataset
    from craft_ray.model_names import with_modality
    from craft_ray.models.classifier import resolve_classifier
    from craft_ray.train.loop import train_loop
    from craft_ray.train.session import LocalSession

    spec = get_dataset(settings.dataset)
    bad = [r for r in rewards if r not in REWARDS]
    if bad or not rewards:  # before any work: a late typo would cost the runs before it
        raise ConfigError(f"control: unknown reward(s) {bad or 'none given'} (known: {', '.join(REWARDS)})")
    spec.check_labels(list(targets), where="--targets")
    oof = resolve_classifier(with_modality(settings.evaluator, spec.modality))
    unknown = [t for t in targets if t not in oof.labels]
    if unknown:
        raise ConfigError(f"the out-of-family classifier does not know {unknown} (it knows {oof.labels})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="craft-control-") as scratch:
        data = Path(scratch) / "data"
        make_phantom_dataset(
            spec.modality, settings.n_data, data, settings.resolution, seed=21 + settings.seed
        )
        for target in targets:
            seeds = list(range(settings.images))
            before = None
            for reward in rewards:
                if progress:
                    progress(f"{target}: CRAFT with the {reward} reward, {settings.steps} steps")
                out = Path(scratch) / f"{target}-{reward}".replace(" ", "_")
                cfg = control_config(settings, data, target, reward, out).resolved()
                session = LocalSession(out)
                train_loop(cfg, session)
                if before is None:
                    before = p_target(cfg, None, target, seeds, oof)
                after = p_target(
                    cfg, str(out / f"checkpoint_{settings.steps:06d}" / "lora"), target, seeds, oof
                )
                trained = [m["reward"] for m in session.metrics]
                rows.append(
                    ControlRow(
                        target,
                        reward,
                        float(np.mean(trained[:5])),
                        float(np.mean(trained[-5:])),
                        float(before.mean()),
                        float(after.mean()),
                        int((after > before).sum()),
                        len(seeds),
                    )
                )
    return rows


def p_target(cfg: ExperimentConfig, weights: str | None, target: str, seeds: list[int], oof) -> np.ndarray:
    """The out-of-family classifier's P(target) on images of [target] from `seeds`: the base's
    (`weights` None) or with a run's LoRA."""
    from craft_ray.evaluation.generation import ImageGenerator, SamplerSettings
    from craft_ray.evaluation.source import ModelSource

    source = ModelSource(cfg, "control", "craft", "lora" if weights else None, weights, None, None)
    sampler = SamplerSettings(cfg.training.sampler_steps, cfg.training.guidance_scale, 0.0)
    images, _ = ImageGenerator(source, sampler).generate([[target]] * len(seeds), seeds)
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0) for im in images])
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return oof.predict_proba(x)[:, oof.labels.index(target)]


def as_json(settings: ControlSettings, rows: list[ControlRow]) -> dict[str, Any]:
    return {"settings": asdict(settings), "rows": [{**asdict(r), "moved": r.moved} for r in rows]}
