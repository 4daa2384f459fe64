"""CRAFT: reward backpropagation through the DDIM sampler into UNet LoRA.

Each micro-batch: sample from the label sets' prompts along the configured gradient path (which
sampler steps carry a graph: `craft_ray.train.gradient_paths`), decode with the VAE into the
modality's channels, score with the differentiable training reward (`craft_ray.train.reward`:
the CAS of the reward VLM, or a classifier; optionally averaged over augmentations), and combine
its gradient with lambda x the denoising loss on real images (`craft_ray.train.balance`: raw
weights, or a reward/denoising gradient ratio held by construction).
"""

from __future__ import annotations

from typing import Any

import torch

from craft_ray.train.balance import Balance
from craft_ray.train.context import TrainContext
from craft_ray.train.ddim import DDIMSampler
from craft_ray.train.gradient_paths import build_gradient_path
from craft_ray.train.methods.base import Method
from craft_ray.train.reward import build_training_reward


class Craft(Method):
    name = "craft"
    adapter = "lora"
    uses_reward = True

    def setup(self, ctx: TrainContext) -> None:
        t = ctx.cfg.training
        self.sampler = DDIMSampler(ctx.components.scheduler, t.sampler_steps, ctx.device)
        self.path = build_gradient_path(t, self.sampler)
        self.reward = build_training_reward(ctx.cfg, ctx.evaluator, ctx.device)
        self.balance = Balance.from_config(t)

    def loss(
        self, ctx: TrainContext, rows: list[int], step: int, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        t_cfg = ctx.cfg.training
        labels = ctx.labels_of(rows)
        cond = ctx.encode(ctx.prompts(labels, step, index))
        uncond = ctx.encode([""] * len(rows))
        path = self.path(ctx, cond, uncond, step, index)
        images = ctx.decode(path.latents)
        result = self.reward(images, labels * path.samples, ctx.generator(step, index, "augment"))
        reward = result.total.mean()
        denoise = ctx.denoising_loss(rows, step, index) if t_cfg.denoise_weight > 0 else None
        loss, metrics = self.balance.combine(reward, denoise, ctx.trainable, ctx.loss_scale())
        metrics.update(
            reward=float(reward.detach()),
            backprop_steps=float(len(path.grad_steps)),  # sampler steps whose UNet call had a gradient
            first_grad_step=float(min(path.grad_steps, default=-1)),
        )
        metrics.update({f"cas_{name}": float(v.mean()) for name, v in result.dims.items()})
        if denoise is not None:
            metrics["denoise_loss"] = float(denoise.detach())
        return loss, metrics

    def end_step(self, metrics: dict[str, Any]) -> None:
        """The running average of the denoising gradient's norm, from the rank-averaged step metrics
        (so every rank holds the same value, and a resumed run the value it stopped with)."""
        self.balance.observe(metrics.get("grad_norm_denoise"))

    def state_dict(self) -> dict[str, Any]:
        return self.balance.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.balance.load_state_dict(state)
