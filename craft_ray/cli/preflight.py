"""Checks every command runs on an experiment config before any work (and before Ray starts):
the calibrations it names must have been made with the evaluator that will use them."""

from __future__ import annotations

from craft_ray.config import ExperimentConfig
from craft_ray.errors import ConfigError


def check_calibrations(cfg: ExperimentConfig, reward: bool = True, evaluation: bool = True) -> None:
    """`reward.calibration` against the reward's evaluator (what `craft train` checks again in its
    workers) and `evaluation.calibration` against the evaluation's evaluator
    (`craft_ray.evaluation.references.evaluation_spec`): same dataset, VLM and label space. The
    error names the calibration's side and the config's."""
    from craft_ray.cas.calibration import Calibration
    from craft_ray.cas.score import EvaluatorSpec

    checks = []
    if reward and cfg.reward.calibration and _uses_reward(cfg.method):
        checks.append(
            ("reward.calibration", cfg.reward.calibration, EvaluatorSpec.from_config(cfg), "reward")
        )
    if evaluation and cfg.evaluation.calibration:
        from craft_ray.evaluation.references import evaluation_spec

        checks.append(
            ("evaluation.calibration", cfg.evaluation.calibration, evaluation_spec(cfg), "evaluation")
        )
    for key, path, spec, user in checks:
        try:
            Calibration.load(path).check_matches(spec, path, f"the config's {user}")
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _uses_reward(method: str) -> bool:
    from craft_ray.train.methods import get_method

    return get_method(method).uses_reward
