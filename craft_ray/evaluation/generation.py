"""Image generation from a model source with a diffusers pipeline.

The base model comes from `model.base`; a run's LoRA is loaded the diffusers way
(`pipe.load_lora_weights`), a full_sft run's UNet with `from_pretrained`. Prompts are the
training prompts (template + the config's enrichment); sampler settings come from the run's
config unless overridden. Each image has its own seed: its initial noise, its DDIM noise (eta > 0)
and its enrichment phrases are drawn from it, so an image is reproduced from (labels, seed) alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from craft_ray.config import ExperimentConfig
from craft_ray.evaluation.source import ModelSource
from craft_ray.knowledge.labels import get_dataset
from craft_ray.knowledge.prompts import build_prompt, enricher_for
from craft_ray.models.diffusion import WEIGHT_DTYPES, build_diffusion
from craft_ray.models.lora import load_lora_into


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    guidance_scale: float
    eta: float
    dtype: str = "fp32"  # evaluation.weight_dtype: the pipeline's weights and sampling arithmetic

    @classmethod
    def from_config(
        cls,
        cfg: ExperimentConfig,
        steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
    ) -> SamplerSettings:
        """Explicit values, else `evaluation.*` overrides, else the training sampler of the run."""
        ev, t = cfg.evaluation, cfg.training
        pick = lambda *values: next(v for v in values if v is not None)  # noqa: E731
        return cls(
            int(pick(steps, ev.sampler_steps, t.sampler_steps)),
            float(pick(guidance_scale, ev.guidance_scale, t.guidance_scale)),
            float(pick(eta, ev.eta, t.eta)),
            ev.weight_dtype,
        )

    def identity(self) -> dict:
        """What identifies the images these settings make (fp32, the default, is left out, so
        evaluations stored before the dtype existed still match)."""
        return {k: v for k, v in self.__dict__.items() if not (k == "dtype" and v == "fp32")}


def to_uint8(images: np.ndarray, channels: int) -> list[np.ndarray]:
    """Pipeline output (B, H, W, 3) floats in [0, 1] -> uint8 arrays, greyscale (H, W) when channels == 1
    (PIL's luma conversion, as the dataset converters do)."""
    arrays = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    if channels == 3:
        return list(arrays)
    return [np.asarray(Image.fromarray(a, "RGB").convert("L")) for a in arrays]


class ImageGenerator:
    def __init__(self, source: ModelSource, sampler: SamplerSettings, device: str | torch.device = "cpu"):
        cfg = source.cfg
        components = build_diffusion(cfg.model.base, cfg.model.revision)
        if source.adapter == "unet":
            from diffusers import UNet2DConditionModel

            components.unet = UNet2DConditionModel.from_pretrained(source.weights)
        pipe = components.pipeline()
        self.device = torch.device(device)
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        # expected, not news: "no LoRA keys for the text encoder" (UNet-only LoRA), and casting
        # warnings for evaluation.weight_dtype (fp16 on CPU is slow but runs)
        diffusers_logging.set_verbosity_error()
        try:
            if source.adapter == "lora":
                load_lora_into(pipe, source.weights)
            self.pipe = pipe.to(self.device, WEIGHT_DTYPES[sampler.dtype])
        finally:
            diffusers_logging.set_verbosity(level)
        self.pipe.set_progress_bar_config(disable=True)
        self.source, self.sampler = source, sampler
        self.spec = get_dataset(cfg.dataset.name)
        self.resolution = cfg.dataset.resolution
        self.enricher = enricher_for(get_dataset(cfg.dataset.name), cfg.prompts)

    def prompt(self, labels: Sequence[str], seed: int) -> str:
        return build_prompt(self.spec, list(labels), self.enricher, random.Random(seed))

    @torch.no_grad()
    def generate(
        self, label_sets: Sequence[Sequence[str]], seeds: Sequence[int]
    ) -> tuple[list[np.ndarray], list[str]]:
        """uint8 images (greyscale for chest, RGB otherwise) and the prompts used, one per label set."""
        for labels in label_sets:
            self.spec.check_labels(list(labels))
        prompts = [self.prompt(labels, seed) for labels, seed in zip(label_sets, seeds, strict=True)]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipe(
            prompts,
            num_inference_steps=self.sampler.steps,
            guidance_scale=self.sampler.guidance_scale,
            eta=self.sampler.eta,
            height=self.resolution,
            width=self.resolution,
            generator=generators,
            output_type="np",
        ).images
        return to_uint8(np.asarray(out), self.spec.channels), prompts
