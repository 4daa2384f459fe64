"""The offline demo (`craft demo`, `make demo`): CRAFT against its baselines on phantoms, with
the shipped phantom models, checked by an out-of-family classifier."""

from craft_ray.demo.experiments import DEMO_EXPERIMENTS, DemoLayout, load_experiments
from craft_ray.demo.run import DemoOptions, SeedResult, run_demo, run_seed

__all__ = [
    "DEMO_EXPERIMENTS",
    "DemoLayout",
    "DemoOptions",
    "SeedResult",
    "load_experiments",
    "run_demo",
    "run_seed",
]
