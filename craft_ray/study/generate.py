"""Images of a run's final model for given label sets and seeds, through the evaluation's generator
(`craft_ray.evaluation.generation.ImageGenerator`): the same prompts (template + the run's
enrichment) and per-image seeding, with the run's training sampler (training.sampler_steps,
guidance_scale, eta), so a reader sees what the run was trained to produce."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from craft_ray.evaluation.generation import ImageGenerator, SamplerSettings
from craft_ray.evaluation.source import open_run as open_model
from craft_ray.study.runs import StudyRun


def generate_images(
    run: StudyRun, label_sets: Sequence[Sequence[str]], seeds: Sequence[int], batch_size: int = 8
) -> list[np.ndarray]:
    """One uint8 image per (label set, seed), greyscale for one-channel datasets. Each image's initial
    noise and enrichment phrases come from its own seed, so two runs given the same seed start from
    the same noise."""
    t = run.cfg.training
    generator = ImageGenerator(
        open_model(run.directory), SamplerSettings(t.sampler_steps, t.guidance_scale, t.eta)
    )
    images: list[np.ndarray] = []
    for start in range(0, len(seeds), batch_size):
        batch, _ = generator.generate(
            label_sets[start : start + batch_size], seeds[start : start + batch_size]
        )
        images += batch
    return images
