"""How CRAFT's reward gradient reaches the UNet: which sampler steps carry a graph.

Clinical findings (heart size, a blunted costophrenic angle) are decided at high noise, while the
last DDIM step passes the reward almost nothing (at T = 10 its d x / d eps is about -0.012 against
-0.2 to -0.6 for earlier steps). Each path below samples from the same initial noise with the
same DDIM sampler and differs only in where the graph is kept:

- `last_k` (DRaFT-K; AlignProp's random truncation with `training.random_truncation`): the last K
  steps fully on the graph (the UNet's input and its parameters), earlier steps without any.
  K = T backpropagates through the whole chain (AlignProp), gradient checkpointing keeping the
  memory of one UNet call per step.
- `sparse` (DRTune): `training.sparse_steps` steps spread over the whole trajectory (one per
  stride, at an offset drawn per micro-batch, so early steps are included); at those steps the UNet
  runs with a parameter gradient but its input is detached (stop-gradient at the UNet input), and
  from the first of them on the DDIM updates stay on the graph, so the gradient travels back along
  their linear path: one UNet backward per chosen step, whatever T.
- `refl` (ReFL): no graph down to a step drawn `training.refl_range` steps before the end, one
  UNet step with gradient there, and the reward on that step's predicted clean image x0.
- `lv` (DRaFT-LV): the full chain without graph, then `training.lv_samples` times: the final
  latents re-noised to the last timestep and denoised again with gradient; the reward is taken
  on each (the method averages them).

Every path records a `Trace` of its steps (which ran the UNet with a parameter gradient, which
detached its input, which kept the update on the graph), so tests check the graph, not only the
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from craft_ray.errors import ConfigError
from craft_ray.train.ddim import DDIMSampler

PATHS = ("last_k", "sparse", "refl", "lv")


@dataclass
class StepTrace:
    index: int  # position in the sampler's timesteps (0 = the noisiest)
    timestep: int
    unet_grad: bool  # the UNet ran with a gradient for its parameters
    input_detached: bool  # ... with its input cut from the graph (DRTune's stop-gradient)
    on_graph: bool  # the step's output latents are on the graph


@dataclass
class PathResult:
    latents: torch.Tensor  # (B * samples, C, h, w) what the reward scores (decoded by the method)
    samples: int  # images per label set (DRaFT-LV's re-noised copies; 1 otherwise)
    trace: list[StepTrace] = field(default_factory=list)

    @property
    def grad_steps(self) -> list[int]:
        return [s.index for s in self.trace if s.unet_grad]


class GradientPath:
    name = ""

    def __init__(self, training, sampler: DDIMSampler):
        self.t, self.sampler = training, sampler

    def __call__(self, ctx, cond, uncond, step: int, index: int) -> PathResult:
        raise NotImplementedError

    # -- shared pieces ---------------------------------------------------------------------
    def initial_latents(self, ctx, batch: int, step: int, index: int) -> torch.Tensor:
        noise = torch.randn(
            ctx.latent_shape(batch), generator=ctx.generator(step, index, "noise"), device=ctx.device
        )
        return noise * self.sampler.init_noise_sigma

    def run(
        self,
        ctx,
        latents: torch.Tensor,
        cond,
        uncond,
        step: int,
        index: int,
        grad_steps: set[int],
        detach_input: bool,
        graph_from: int,
    ) -> tuple[torch.Tensor, list[StepTrace], torch.Tensor | None]:
        """DDIM over every timestep: the UNet with a parameter gradient at `grad_steps` (input
        detached when `detach_input`), updates on the graph from step `graph_from` on. Returns the
        final latents, the trace and the last predicted x0."""
        noise_gen = ctx.generator(step, index, "sampler")
        trace, x0 = [], None
        for i, t in enumerate(self.sampler.timesteps):
            on_graph = i >= graph_from
            unet_grad = i in grad_steps
            with torch.set_grad_enabled(on_graph or unet_grad):
                x_in = latents.detach() if (detach_input and unet_grad) else latents
                if unet_grad:
                    eps = ctx.predict_noise(x_in, t, cond, uncond, with_grad=True)
                else:
                    with torch.no_grad():
                        eps = ctx.predict_noise(x_in, t, cond, uncond, with_grad=False)
                if not on_graph:
                    latents = latents.detach()
                out = self.sampler.step(eps, t, latents, self.t.eta, noise_gen)
                latents, x0 = out.prev_sample, out.pred_original
            trace.append(StepTrace(i, int(t), unet_grad, bool(detach_input and unet_grad), on_graph))
        return latents, trace, x0


class LastK(GradientPath):
    """DRaFT-K / AlignProp: the last K steps fully on the graph."""

    name = "last_k"

    def __call__(self, ctx, cond, uncond, step: int, index: int) -> PathResult:
        k = self.t.backprop_steps
        if self.t.random_truncation:
            k = ctx.rng(step, index, "truncation").randint(1, self.t.backprop_steps)
        n = len(self.sampler.timesteps)
        first = n - k
        latents = self.initial_latents(ctx, cond.shape[0], step, index)
        latents, trace, _ = self.run(
            ctx, latents, cond, uncond, step, index, set(range(first, n)), False, first
        )
        return PathResult(latents, 1, trace)


def sparse_schedule(n_steps: int, count: int, offset: int) -> list[int]:
    """`count` step indices, one per stride of n_steps / count, at `offset` within the stride
    (0 <= offset < stride): the schedule reaches from the noisiest steps to the last."""
    stride = n_steps / count
    return sorted({min(n_steps - 1, int(k * stride) + offset) for k in range(count)})


class Sparse(GradientPath):
    """DRTune: a sparse schedule over the whole trajectory, stop-gradient at the UNet input."""

    name = "sparse"

    def __call__(self, ctx, cond, uncond, step: int, index: int) -> PathResult:
        n = len(self.sampler.timesteps)
        stride = max(1, n // self.t.sparse_steps)
        offset = ctx.rng(step, index, "truncation").randrange(stride)
        chosen = sparse_schedule(n, self.t.sparse_steps, offset)
        latents = self.initial_latents(ctx, cond.shape[0], step, index)
        latents, trace, _ = self.run(ctx, latents, cond, uncond, step, index, set(chosen), True, chosen[0])
        return PathResult(latents, 1, trace)


class ReFL(GradientPath):
    """ReFL: the reward on the predicted clean image of one step with gradient, drawn near the end."""

    name = "refl"

    def __call__(self, ctx, cond, uncond, step: int, index: int) -> PathResult:
        n = len(self.sampler.timesteps)
        low, high = self.t.refl_range or (1, max(1, n // 2))
        back = ctx.rng(step, index, "truncation").randint(low, min(high, n))  # steps before the end
        stop = n - back
        latents = self.initial_latents(ctx, cond.shape[0], step, index)
        noise_gen = ctx.generator(step, index, "sampler")
        trace = []
        with torch.no_grad():
            for i, t in enumerate(self.sampler.timesteps[:stop]):
                eps = ctx.predict_noise(latents, t, cond, uncond, with_grad=False)
                latents = self.sampler.step(eps, t, latents, self.t.eta, noise_gen).prev_sample
                trace.append(StepTrace(i, int(t), False, False, False))
        t = self.sampler.timesteps[stop]
        eps = ctx.predict_noise(latents, t, cond, uncond, with_grad=True)
        x0 = self.sampler.step(eps, t, latents, self.t.eta, noise_gen).pred_original
        trace.append(StepTrace(stop, int(t), True, False, True))
        return PathResult(x0, 1, trace)


class LowVariance(GradientPath):
    """DRaFT-LV: re-noise the final latents to the last timestep and denoise again with gradient,
    `lv_samples` times per image."""

    name = "lv"

    def __call__(self, ctx, cond, uncond, step: int, index: int) -> PathResult:
        n = len(self.sampler.timesteps)
        latents = self.initial_latents(ctx, cond.shape[0], step, index)
        latents, trace, _ = self.run(ctx, latents, cond, uncond, step, index, set(), False, n)
        t = self.sampler.timesteps[-1]
        scheduler = ctx.components.scheduler
        samples = self.t.lv_samples
        gen = ctx.generator(step, index, "vae")
        clean = latents.detach().repeat(samples, 1, 1, 1)
        noise = torch.randn(clean.shape, generator=gen, device=ctx.device, dtype=clean.dtype)
        noisy = scheduler.add_noise(clean, noise, t.reshape(1).expand(len(clean)).to(ctx.device))
        rep = lambda x: x.repeat(samples, 1, 1)  # noqa: E731 - prompt embeddings per copy
        eps = ctx.predict_noise(noisy, t, rep(cond), rep(uncond), with_grad=True)
        out = self.sampler.step(eps, t, noisy, 0.0).prev_sample
        trace[-1] = StepTrace(n - 1, int(t), True, False, True)
        return PathResult(out, samples, trace)


def build_gradient_path(training, sampler: DDIMSampler) -> GradientPath:
    classes = {cls.name: cls for cls in (LastK, Sparse, ReFL, LowVariance)}
    if training.gradient_path not in classes:
        raise ConfigError(
            f"unknown training.gradient_path {training.gradient_path!r} (known: {', '.join(PATHS)})"
        )
    return classes[training.gradient_path](training, sampler)
