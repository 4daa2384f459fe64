"""CRAFT and the baselines on Ray Train: one loop skeleton, the methods, checkpoints, the driver."""

from craft_ray.train.loop import train_loop, train_loop_per_worker
from craft_ray.train.session import LocalSession, RaySession
from craft_ray.train.trainer import TrainingSummary, read_metrics, run_training

__all__ = [
    "LocalSession",
    "RaySession",
    "TrainingSummary",
    "read_metrics",
    "run_training",
    "train_loop",
    "train_loop_per_worker",
]
