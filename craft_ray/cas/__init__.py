"""The Clinical Alignment Score: four dimensions, the weighted score, thresholds and the tail metric."""

from craft_ray.cas.calibration import Calibration, calibrate, score_images
from craft_ray.cas.dimensions import RealismReference
from craft_ray.cas.score import DIMENSIONS, CASEvaluator, CASResult, EvaluatorSpec, build_evaluator
from craft_ray.cas.tail import TailRow, tail_report

__all__ = [
    "DIMENSIONS",
    "CASEvaluator",
    "CASResult",
    "Calibration",
    "EvaluatorSpec",
    "RealismReference",
    "TailRow",
    "build_evaluator",
    "calibrate",
    "score_images",
    "tail_report",
]
