"""Which swept keys a method reads, and the trial list of a sweep.

A method that does not read a key is not trained once per value of it: `pretrained`, `lora_sft`
and `full_sft` ignore the reward, so a reward-weight grid gives them one trial per dataset. The
rules follow what the training methods and the validation (which generates with the run's
sampler settings) actually read; keys they do not know about are assumed to matter.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from craft_ray.config import ExperimentConfig
from craft_ray.train.methods import get_method
from craft_ray.tune.spec import Scalar, SweepSpec

# Read by the validation's image generation, so they matter for every method (pretrained too).
SAMPLER_KEYS = frozenset({"training.sampler_steps", "training.guidance_scale", "training.eta"})
# Read only by CRAFT's loss: its gradient path and the balance of its reward with the denoising loss.
CRAFT_KEYS = frozenset(
    {
        "training.backprop_steps",
        "training.random_truncation",
        "training.denoise_weight",
        "training.gradient_path",
        "training.sparse_steps",
        "training.refl_range",
        "training.lv_samples",
        "training.reward_balance",
        "training.reward_scale",
        "training.reward_ratio",
        "training.balance_momentum",
    }
)
CHECKLIST_WEIGHTS = frozenset({"reward.weights.checklist", "reward.weights.anatomy"})


def reads(cfg: ExperimentConfig, key: str) -> bool:
    """Whether training `cfg` (and validating the result) depends on config key `key`."""
    method = get_method(cfg.method)
    if key.startswith("reward."):
        if key in CHECKLIST_WEIGHTS and not cfg.reward.use_checklists:
            return False  # reward.use_checklists=false zeroes these weights
        return method.uses_reward
    if key.startswith("ddpo."):
        return cfg.method == "ddpo"
    if key in CRAFT_KEYS:
        return cfg.method == "craft"
    if key in SAMPLER_KEYS:
        return True
    if key.startswith("model.lora_"):
        return method.adapter == "lora"
    if key.startswith(("training.", "scaling.")):
        return method.adapter is not None  # pretrained trains nothing
    return True


def points(spec: SweepSpec) -> list[dict[str, Scalar]]:
    """Every assignment of the search space: grid keys crossed, sampled keys drawn `num_samples`
    times per grid point from one seeded stream (the same draws for every dataset and method)."""
    grid_keys = [k for k, d in spec.space.items() if d.kind == "grid"]
    sampled_keys = [k for k, d in spec.space.items() if d.kind != "grid"]
    rng = np.random.default_rng(spec.search.seed)
    out = []
    for values in itertools.product(*(spec.space[k].grid for k in grid_keys)):
        for _ in range(spec.search.num_samples if sampled_keys else 1):
            draw = {k: spec.space[k].sample(rng) for k in sampled_keys}
            out.append({**dict(zip(grid_keys, values, strict=True)), **draw})
    return out


def _value_slug(value: Scalar) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9_.]", "", text.replace("+", "").replace("-", "m"))


def trial_name(dataset: str, method: str, params: dict[str, Scalar]) -> str:
    """Deterministic: the same dataset, method and values always give the same name (and run
    directory), so a retried or restored trial finds its own checkpoints and validations."""
    base = f"{dataset}-{method}"
    if not params:
        return base
    readable = "-".join(f"{key.rsplit('.', 1)[-1]}{_value_slug(v)}" for key, v in params.items())
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"{base}-{readable[:60]}-{digest}"


@dataclass
class TrialPlan:
    name: str
    dataset: str
    method: str  # the sweep's method (experiment) name, e.g. craft_no_lambda
    params: dict[str, Scalar]  # the swept values this trial's method reads
    cfg: ExperimentConfig  # resolved: absolute paths, storage under the sweep's runs/
    rungs: list[int]  # training steps at which it is validated (and reported to Tune)

    @property
    def group(self) -> str:
        """Trials that ASHA compares with each other: same dataset, same method."""
        return f"{self.dataset}/{self.method}"

    def tune_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "method": self.method,
            "params": dict(self.params),
        }


@dataclass
class SweepPlan:
    trials: list[TrialPlan]
    notes: list[str] = field(default_factory=list)

    def by_name(self) -> dict[str, TrialPlan]:
        return {t.name: t for t in self.trials}


def rungs(steps: int, every: int | None, trains: bool) -> list[int]:
    """Validation steps: every `every` steps and at the end; a method that trains nothing: [0]."""
    if not trains or steps == 0:
        return [0]
    if every is None or every >= steps:
        return [steps]
    return [*range(every, steps, every), steps]
