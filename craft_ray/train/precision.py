"""How a training worker stores and runs its models: `training.weight_dtype`, `.channels_last`,
`.compile` (README "Precision and compilation").

- **Weight dtype.** The frozen weights (UNet, VAE, text encoder, the reward VLM) are stored in
  `weight_dtype`; trainable parameters (LoRA, or the whole UNet for `full_sft`) and the optimiser
  stay fp32, as diffusers' `train_text_to_image_lora.py` does with its `weight_dtype`. A bf16/fp16
  weight needs its inputs in the same dtype, so such runs autocast to that dtype on every device;
  fp16 adds dynamic loss scaling (its gradients underflow where bf16's do not).
- **Attention** goes through `scaled_dot_product_attention`: diffusers 0.42 already gives its UNet
  and VAE `AttnProcessor2_0` and transformers' CLIP `sdpa`; a model loaded with the classic
  processor is switched to it.
- **Compilation** wraps the UNet's forward: calls with gradient run a `torch.compile`d forward
  (default mode), calls without gradient (the sampler steps) one in `mode="reduce-overhead"` on
  CUDA, i.e. CUDA graphs. Compilation is lazy and the backward is lowered at the first backward,
  so one warm-up step (the method's own first micro-batch, gradients discarded) compiles every
  graph before training starts; if anything in it fails, or a compiled call fails later, the run
  warns once and continues eager (metrics: `compiled` 0, `compile_fallback` 1).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from craft_ray.config import TrainingConfig
from craft_ray.errors import CraftError
from craft_ray.models.diffusion import WEIGHT_DTYPES as DTYPES

if TYPE_CHECKING:
    from craft_ray.train.context import TrainContext
    from craft_ray.train.methods import Method


def autocast_dtype(t: TrainingConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of every forward pass of a step (None: none). Stored bf16/fp16 weights
    set it on any device; otherwise `mixed_precision` does (auto: bf16 on CUDA, none on CPU)."""
    if t.weight_dtype != "fp32":
        return DTYPES[t.weight_dtype]
    if t.mixed_precision == "bf16" or (t.mixed_precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(t: TrainingConfig, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(t, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store `module`'s frozen floating-point parameters and buffers in `dtype`; parameters that
    require gradients keep theirs. Returns how many tensors changed dtype. (Per tensor rather than
    `module.to(dtype)`, which would round trainable weights through `dtype` as well.)"""
    changed = 0
    tensors = [p for p in module.parameters() if not p.requires_grad] + list(module.buffers())
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)
            changed += 1
    return changed


def ensure_sdpa(module: torch.nn.Module) -> list[str]:
    """Switch a diffusers model's classic attention processors to `AttnProcessor2_0`
    (`scaled_dot_product_attention`); returns the processor class names now in use."""
    processors = getattr(module, "attn_processors", None)
    if not processors:
        return []
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if any(type(p) is AttnProcessor for p in processors.values()):
        module.set_attn_processor(
            {name: AttnProcessor2_0() if type(p) is AttnProcessor else p for name, p in processors.items()}
        )
    return sorted({type(p).__name__ for p in module.attn_processors.values()})


class LossScaler:
    """Dynamic loss scaling for fp16 (what `torch.amp.GradScaler` does), driven by the loop's
    all-reduced update status, so every rank halves or grows the same scale at the same update.
    An overflowing update is skipped like any non-finite one (counted in `skipped_nonfinite`).
    The scale is not checkpointed: a resumed run starts again from `init`."""

    def __init__(self, enabled: bool, init: float = 2.0**12, growth_interval: int = 100):
        self.enabled, self.value, self.growth_interval, self.clean = enabled, init, growth_interval, 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss.float() * self.value if self.enabled else loss  # (an fp16 loss x 4096 could overflow)

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        if self.enabled:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.value)

    def update(self, overflow: bool) -> None:
        """After the ranks agreed: halve on an overflow, double after `growth_interval` clean updates."""
        if not self.enabled:
            return
        if overflow:
            self.value, self.clean = max(self.value / 2, 1.0), 0
            return
        self.clean += 1
        if self.clean == self.growth_interval:
            self.value, self.clean = self.value * 2, 0


class CompiledForward:
    """Replaces `module.forward` (the instance attribute `nn.Module.__call__` uses) with compiled
    versions of the original: one for calls with gradient, one for calls without (CUDA graphs when
    `cudagraphs`). State dicts, checkpoints and LoRA saving see the plain module."""

    def __init__(self, module: torch.nn.Module, backend: str, cudagraphs: bool):
        self.eager: Callable[..., Any] = module.forward
        self.with_grad = torch.compile(self.eager, backend=backend, dynamic=False)
        self.cudagraphs = cudagraphs
        self.without_grad = (
            torch.compile(self.eager, backend=backend, mode="reduce-overhead", dynamic=False)
            if cudagraphs
            else self.with_grad
        )
        self.active = True
        self.failure: str | None = None
        module.forward = self

    def __call__(self, *args, **kwargs):
        if not self.active:
            return self.eager(*args, **kwargs)
        try:
            if torch.is_grad_enabled():
                return self.with_grad(*args, **kwargs)
            if self.cudagraphs:
                # each sampler step starts a new CUDA-graph generation: the previous step's output
                # has been consumed (the DDIM update made new tensors of it)
                torch.compiler.cudagraph_mark_step_begin()
            return self.without_grad(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as exc:  # the compiler's (inductor's too): eager
            # (only these: others, such as checkpoint's recomputation stop signal, pass through)
            self.fall_back(exc)
            return self.eager(*args, **kwargs)

    def fall_back(self, exc: BaseException) -> None:
        if not self.active:
            return
        self.active = False
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        self.failure = f"{type(exc).__name__}: {first_line}"
        message = f"training.compile: torch.compile failed ({self.failure}); continuing eager"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class Precision:
    """A worker's precision set-up and compile state; `metrics()` goes into every step's record."""

    def __init__(self, t: TrainingConfig, device: torch.device):
        self.dtype = DTYPES[t.weight_dtype]
        self.autocast_dtype = autocast_dtype(t, device)
        self.scaler = LossScaler(enabled=t.weight_dtype == "fp16")
        self.compiled: CompiledForward | None = None
        self.compile_requested = t.compile

    @classmethod
    def setup(cls, ctx: TrainContext, method: Method, trainable: list[torch.nn.Parameter]) -> Precision:
        """Cast, pick the attention kernel and memory format, compile (with its warm-up step)."""
        t, device = ctx.cfg.training, ctx.device
        precision = cls(t, device)
        components = ctx.components
        for module in (components.unet, components.vae, components.text_encoder):
            cast_frozen(module, precision.dtype)
            ensure_sdpa(module)
        vlm = getattr(ctx.evaluator, "vlm", None)  # the reward's image-text model, if it has one
        if isinstance(vlm, torch.nn.Module):
            cast_frozen(vlm, precision.dtype)
            vlm.to(device)  # clears its text-embedding cache (made in the old dtype)
        if t.channels_last:  # convolutions read NHWC: cuDNN's fast layout for bf16/fp16
            for module in (components.unet, components.vae):
                module.to(memory_format=torch.channels_last)
        if t.compile and trainable:
            cudagraphs = t.compile_cudagraphs and device.type == "cuda" and t.compile_backend == "inductor"
            precision.compiled = CompiledForward(components.unet, t.compile_backend, cudagraphs)
            precision.warm_up(ctx, method, trainable)
        return precision

    def warm_up(self, ctx: TrainContext, method: Method, trainable: list[torch.nn.Parameter]) -> None:
        """Compile every graph of a step now (forward and the lazily lowered backward) by running the
        method's first micro-batch of step 1; its gradients are discarded. All randomness of a step
        comes from seeded generators, so this changes nothing the run computes afterwards."""
        assert self.compiled is not None
        try:
            with ctx.autocast():
                plan = method.plan(ctx, 0)
                loss, _ = method.loss(ctx, plan.updates[0][0], 0, 0)
            loss.backward()
        except CraftError as exc:  # e.g. an MLLM endpoint: not the compiler's doing; compile lazily
            print(f"warning: training.compile: warm-up step skipped ({exc})", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - a compiler failure of any kind: eager
            self.compiled.fall_back(exc)
        finally:
            for p in trainable:
                p.grad = None

    # -- the loop's hooks ------------------------------------------------------------------
    def current_scale(self) -> float:
        """The fp16 loss scale now (1.0 without loss scaling)."""
        return float(self.scaler.value) if self.scaler.enabled else 1.0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        self.scaler.unscale_(params)

    def update_scale(self, overflow: bool) -> None:
        self.scaler.update(overflow)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.compile_requested:
            active = self.compiled is not None and self.compiled.active
            out["compiled"] = float(active)
            out["compile_fallback"] = float(self.compiled is not None and not active)
        if self.scaler.enabled:
            out["loss_scale"] = float(self.scaler.value)
        return out
