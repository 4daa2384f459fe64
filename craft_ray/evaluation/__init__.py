"""Evaluation at scale: Ray Data generation + CAS scoring + the out-of-family evaluator, metrics."""

from craft_ray.evaluation.generation import ImageGenerator, SamplerSettings
from craft_ray.evaluation.runner import EvalRequest, Reporter, RunResult, evaluate
from craft_ray.evaluation.source import ModelSource, open_run, pretrained_source

__all__ = [
    "EvalRequest",
    "ImageGenerator",
    "ModelSource",
    "Reporter",
    "RunResult",
    "SamplerSettings",
    "evaluate",
    "open_run",
    "pretrained_source",
]
