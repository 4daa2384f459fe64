"""Denoising fine-tuning baselines: `lora_sft` (what diffusers' train_text_to_image_lora does) and
`full_sft` (all UNet weights), on real images with their label prompts."""

from __future__ import annotations

import torch

from craft_ray.train.context import TrainContext
from craft_ray.train.methods.base import Method


class LoraSFT(Method):
    name = "lora_sft"
    adapter = "lora"

    def loss(
        self, ctx: TrainContext, rows: list[int], step: int, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = ctx.denoising_loss(rows, step, index)
        return loss, {"denoise_loss": float(loss.detach())}


class FullSFT(LoraSFT):
    name = "full_sft"
    adapter = "unet"


class Pretrained(Method):
    """No training: the base model as it is, checkpointed once so sweeps and evaluation treat it
    like any other method."""

    name = "pretrained"
    adapter = None
