"""CRAFT: DRaFT-K reward backpropagation into UNet LoRA.

Sample with DDIM for T steps without gradient except the last K (K fixed, or drawn in [1, K]
as AlignProp's random truncation), decode with the VAE, score with the differentiable CAS and
minimise -reward (+ lambda * the denoising loss on real images, to stay on the data manifold).
"""

from __future__ import annotations

import torch

from craft_ray.train.context import TrainContext
from craft_ray.train.ddim import DDIMSampler
from craft_ray.train.methods.base import Method


class Craft(Method):
    name = "craft"
    adapter = "lora"
    uses_reward = True

    def setup(self, ctx: TrainContext) -> None:
        self.sampler = DDIMSampler(ctx.components.scheduler, ctx.cfg.training.sampler_steps, ctx.device)

    def sample_with_grad(
        self, ctx: TrainContext, cond, uncond, step: int, index: int, backprop_steps: int
    ) -> torch.Tensor:
        """Latents after T DDIM steps, the last `backprop_steps` of them on the graph."""
        t_cfg = ctx.cfg.training
        sampler = self.sampler
        latents = torch.randn(
            ctx.latent_shape(cond.shape[0]), generator=ctx.generator(step, index, "noise"), device=ctx.device
        )
        latents = latents * sampler.init_noise_sigma
        noise_gen = ctx.generator(step, index, "sampler")
        first_grad = len(sampler.timesteps) - backprop_steps
        for i, t in enumerate(sampler.timesteps):
            with_grad = i >= first_grad
            with torch.set_grad_enabled(with_grad):
                eps = ctx.predict_noise(latents, t, cond, uncond, with_grad)
                latents = sampler.step(eps, t, latents, t_cfg.eta, noise_gen).prev_sample
        return latents

    def loss(
        self, ctx: TrainContext, rows: list[int], step: int, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        t_cfg = ctx.cfg.training
        labels = ctx.labels_of(rows)
        cond = ctx.encode(ctx.prompts(labels, step, index))
        uncond = ctx.encode([""] * len(rows))
        k = t_cfg.backprop_steps
        if t_cfg.random_truncation:
            k = ctx.rng(step, index, "truncation").randint(1, t_cfg.backprop_steps)
        images = ctx.decode(self.sample_with_grad(ctx, cond, uncond, step, index, k))
        result = ctx.evaluator.score(images, labels)
        loss = -result.total.mean()
        metrics = {"reward": float(result.total.detach().mean()), "backprop_steps": float(k)}
        metrics.update({f"cas_{name}": float(v.detach().mean()) for name, v in result.dims.items()})
        if t_cfg.denoise_weight > 0:
            denoise = ctx.denoising_loss(rows, step, index)
            loss = loss + t_cfg.denoise_weight * denoise
            metrics["denoise_loss"] = float(denoise.detach())
        return loss, metrics
