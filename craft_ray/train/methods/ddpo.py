"""DDPO-IS: policy-gradient RL on the CAS reward (evaluation path; need not be differentiable).

Each step samples `batch_size` label sets x `samples_per_prompt` images with DDIM (eta > 0),
keeping every transition and its log-probability; rewards are normalised per prompt into
advantages; then, over `inner_epochs` passes through a share of the sampler steps split into
`updates_per_epoch` optimiser updates, the current model's log-probability of each transition
against the sampling-time one gives the importance ratio (1 for the first update, drifting after),
and the clipped surrogate is minimised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from craft_ray.errors import ConfigError
from craft_ray.train.context import TrainContext
from craft_ray.train.ddim import DDIMSampler
from craft_ray.train.methods.base import Method, StepPlan


@dataclass
class Transition:
    latents: torch.Tensor
    next_latents: torch.Tensor
    timestep: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor


class DDPO(Method):
    name = "ddpo"
    adapter = "lora"
    uses_reward = True
    reward_with_mllm = True

    def setup(self, ctx: TrainContext) -> None:
        cfg = ctx.cfg
        self.sampler = DDIMSampler(ctx.components.scheduler, cfg.training.sampler_steps, ctx.device)
        # a `set_alpha_to_one` scheduler's last step is deterministic: no log-probability to train on
        self.trainable_steps = self.sampler.stochastic_steps(cfg.ddpo.eta)
        self.n_train = max(1, round(len(self.trainable_steps) * cfg.ddpo.timestep_fraction))
        if cfg.ddpo.updates_per_epoch > self.n_train * cfg.training.grad_accum:
            raise ConfigError(
                f"ddpo.updates_per_epoch={cfg.ddpo.updates_per_epoch} exceeds the "
                f"{self.n_train * cfg.training.grad_accum} sampler transitions with a log-probability "
                f"trained per step (this scheduler has {len(self.trainable_steps)} of {cfg.training.sampler_steps})"
            )

    def updates_per_step(self, cfg) -> int:
        return cfg.ddpo.inner_epochs * cfg.ddpo.updates_per_epoch

    @torch.no_grad()
    def plan(self, ctx: TrainContext, step: int) -> StepPlan:
        cfg, sampler = ctx.cfg, self.sampler
        per_prompt = cfg.ddpo.samples_per_prompt
        transitions, rewards = [], []
        for micro in range(cfg.training.grad_accum):
            rows = ctx.batch(step, micro)
            prompt_labels = ctx.labels_of(rows)
            prompts = [p for p in ctx.prompts(prompt_labels, step, micro) for _ in range(per_prompt)]
            labels = [ls for ls in prompt_labels for _ in range(per_prompt)]
            cond, uncond = ctx.encode(prompts), ctx.encode([""] * len(prompts))
            latents = (
                torch.randn(
                    ctx.latent_shape(len(prompts)),
                    generator=ctx.generator(step, micro, "noise"),
                    device=ctx.device,
                )
                * sampler.init_noise_sigma
            )
            noise_gen = ctx.generator(step, micro, "sampler")
            trajectory, log_probs = [latents], []
            for t in sampler.timesteps:
                eps = ctx.predict_noise(latents, t, cond, uncond, with_grad=False)
                out = sampler.step(eps, t, latents, cfg.ddpo.eta, noise_gen)
                latents = out.prev_sample
                trajectory.append(latents)
                log_probs.append(out.log_prob)
            reward = ctx.evaluator.score(ctx.decode(latents), labels, evaluate=True).total.to(ctx.device)
            rewards.append(reward)
            grouped = reward.view(len(rows), per_prompt)
            advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)
            advantages = advantages.flatten().clamp(-cfg.ddpo.adv_clip_max, cfg.ddpo.adv_clip_max)
            chosen = sorted(ctx.rng(step, micro, "timestep").sample(self.trainable_steps, self.n_train))
            for j in chosen:
                transitions.append(
                    Transition(
                        trajectory[j],
                        trajectory[j + 1],
                        sampler.timesteps[j],
                        log_probs[j],
                        advantages,
                        cond,
                        uncond,
                    )
                )
        all_rewards = torch.cat(rewards)
        updates = []
        for epoch in range(cfg.ddpo.inner_epochs):
            order = ctx.rng(step, epoch, "dropout").sample(range(len(transitions)), len(transitions))
            shuffled = [transitions[i] for i in order]
            n = cfg.ddpo.updates_per_epoch
            updates += [shuffled[i::n] for i in range(n)]  # round robin: none empty (config checks n)
        return StepPlan(
            updates, {"reward": float(all_rewards.mean()), "reward_std": float(all_rewards.std())}
        )

    def log_ratio(self, ctx: TrainContext, tr: Transition) -> torch.Tensor:
        """log pi_current(transition) - log pi_sampling(transition), per sample (with gradient)."""
        eps = ctx.predict_noise(tr.latents, tr.timestep, tr.cond, tr.uncond, with_grad=True)
        out = self.sampler.step(eps, tr.timestep, tr.latents, ctx.cfg.ddpo.eta, prev_sample=tr.next_latents)
        return out.log_prob - tr.old_log_prob

    def loss(
        self, ctx: TrainContext, tr: Transition, step: int, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        log_ratio = self.log_ratio(ctx, tr)
        ratio = torch.exp(log_ratio)
        clip = ctx.cfg.ddpo.clip_range
        loss = torch.maximum(-tr.advantages * ratio, -tr.advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
        metrics = {
            "approx_kl": float(0.5 * (log_ratio.detach() ** 2).mean()),
            "clip_fraction": float(((ratio.detach() - 1).abs() > clip).float().mean()),
        }
        return loss, metrics
