"""Images of a run's final model for given label sets and seeds: the one place a study generates.

The evaluation module's generator can take this function's place later: same inputs (a run, label
sets, a seed per image), same output (uint8 arrays, greyscale for one-channel datasets).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from craft_ray.knowledge.labels import get_dataset
from craft_ray.knowledge.prompts import build_prompt, enricher_for
from craft_ray.models import build_diffusion, load_lora_into
from craft_ray.study.runs import StudyRun


@torch.no_grad()
def generate_images(
    run: StudyRun, label_sets: Sequence[Sequence[str]], seeds: Sequence[int], batch_size: int = 8
) -> list[np.ndarray]:
    """One image per (label set, seed) with the run's prompts (template + its enrichment) and
    sampler (training.sampler_steps, guidance_scale, eta). Each image's initial noise and enrichment
    phrases come from its own seed, so two runs given the same seed start from the same noise."""
    cfg = run.cfg
    components = build_diffusion(run.card.get("base", cfg.model.base), cfg.model.revision)
    if run.adapter == "unet":
        from diffusers import UNet2DConditionModel

        components.unet = UNet2DConditionModel.from_pretrained(str(run.final / "unet"))
    pipe = components.pipeline()
    if run.adapter == "lora":
        load_lora_into(pipe, run.final / "lora")
    pipe.set_progress_bar_config(disable=True)
    spec = get_dataset(cfg.dataset.name)
    enricher = enricher_for(spec, cfg.prompts)
    images: list[np.ndarray] = []
    for start in range(0, len(seeds), batch_size):
        batch = list(
            zip(label_sets[start : start + batch_size], seeds[start : start + batch_size], strict=True)
        )
        out = pipe(
            [build_prompt(spec, list(labels), enricher, random.Random(int(seed))) for labels, seed in batch],
            num_inference_steps=cfg.training.sampler_steps,
            guidance_scale=cfg.training.guidance_scale,
            eta=cfg.training.eta,
            height=cfg.dataset.resolution,
            width=cfg.dataset.resolution,
            generator=[torch.Generator("cpu").manual_seed(int(seed)) for _, seed in batch],
            output_type="np",
        ).images
        arrays = np.clip(np.rint(np.asarray(out) * 255.0), 0, 255).astype(np.uint8)
        images += [np.asarray(Image.fromarray(a).convert("L")) if spec.channels == 1 else a for a in arrays]
    return images
