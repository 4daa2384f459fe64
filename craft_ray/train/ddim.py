"""DDIM sampling steps that keep the graph: for reward backprop (DRaFT-K) and DDPO log-probabilities.

diffusers pipelines run under `torch.no_grad()`, so training needs its own loop. The update is the
DDIM formula of `DDIMScheduler.step` (same arithmetic, `alphas_cumprod` kept on the device), plus
the Gaussian log-density of the transition that DDPO needs when eta > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler


@dataclass
class DDIMStep:
    prev_sample: torch.Tensor
    # (B,) mean log-density per element; None when the step is deterministic (eta == 0, or the
    # zero-variance last step of a `set_alpha_to_one` scheduler), where no density exists
    log_prob: torch.Tensor | None
    pred_original: torch.Tensor


class DDIMSampler:
    def __init__(self, scheduler: DDIMScheduler, num_steps: int, device: torch.device):
        scheduler.set_timesteps(num_steps)
        self.timesteps = scheduler.timesteps.to(device)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(device=device, dtype=torch.float32)
        self.step_ratio = scheduler.config.num_train_timesteps // num_steps
        self.prediction_type = scheduler.config.prediction_type
        self.init_noise_sigma = float(scheduler.init_noise_sigma)

    def _alphas(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prev_t = t - self.step_ratio
        alpha = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        return alpha, alpha_prev

    def _std(self, t: torch.Tensor, eta: float) -> torch.Tensor:
        alpha, alpha_prev = self._alphas(t)
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
        return eta * variance.clamp(min=0).sqrt()

    def stochastic_steps(self, eta: float) -> list[int]:
        """Indices of the sampler steps whose transition has a density (non-zero variance): the
        ones DDPO can train on."""
        return [i for i, t in enumerate(self.timesteps) if float(self._std(t, eta)) > 0]

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        prev_sample: torch.Tensor | None = None,
    ) -> DDIMStep:
        """x_t -> x_{t-1}. With eta > 0, samples x_{t-1} (or scores the given `prev_sample`)."""
        alpha, alpha_prev = self._alphas(t)
        beta = 1 - alpha
        if self.prediction_type == "epsilon":
            x0 = (sample - beta.sqrt() * model_output) / alpha.sqrt()
            eps = model_output
        elif self.prediction_type == "v_prediction":
            x0 = alpha.sqrt() * sample - beta.sqrt() * model_output
            eps = alpha.sqrt() * model_output + beta.sqrt() * sample
        else:  # "sample"
            x0 = model_output
            eps = (sample - alpha.sqrt() * x0) / beta.sqrt()
        std = self._std(t, eta)
        mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * eps
        if eta == 0:
            return DDIMStep(mean, None, x0)
        if prev_sample is None:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = mean + std * noise
        if not float(std) > 0:
            return DDIMStep(prev_sample, None, x0)
        log_prob = (
            -((prev_sample.detach() - mean) ** 2) / (2 * std**2)
            - torch.log(std)
            - 0.5 * math.log(2 * math.pi)
        ).mean(dim=tuple(range(1, sample.ndim)))
        return DDIMStep(prev_sample, log_prob, x0)
