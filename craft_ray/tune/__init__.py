"""Ray Tune sweeps: datasets x methods x a search space over experiment-config keys, trained in
rungs with validation after each (ASHA per dataset x method), resumable, with result tables."""

from craft_ray.tune.runner import SweepResult, run_sweep
from craft_ray.tune.spec import SweepSpec, load_spec

__all__ = ["SweepResult", "SweepSpec", "load_spec", "run_sweep"]
