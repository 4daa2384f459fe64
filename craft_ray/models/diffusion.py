"""Stable-Diffusion-family pipelines: from a pretrained path / hub id, or a small config built in code.

`build_diffusion("tiny")` and `build_diffusion("small")` give randomly initialised models (seeded,
identical on every worker) for tests, CPU runs and benchmarks; any other string goes through the
real `from_pretrained` loading used on clusters (SD-1.x layout: unet/, vae/, text_encoder/,
tokenizer/, scheduler/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from craft_ray.errors import ModelError
from craft_ray.models.phantom import is_phantom, phantom_diffusion_dir
from craft_ray.models.tokenizer import text_config_ids, tiny_clip_tokenizer

# The weight dtypes of `training.weight_dtype` and `evaluation.weight_dtype`.
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Sizes of the in-code presets. "tiny": tests and the offline default (a few hundred k
# parameters). "small": a ~20M-parameter UNet for CPU benchmarks of the training loop. "sd15":
# Stable Diffusion 1.5's architecture (860M UNet, its VAE, a CLIP-L-sized text encoder) with random
# weights, for GPU timing without downloading the checkpoint.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
            sample_size=32,
        ),
        "vae": dict(block_out_channels=(16, 32), norm_num_groups=8, sample_size=64),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    },
    "small": {
        "unet": dict(
            block_out_channels=(64, 128, 256),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=128,
            attention_head_dim=8,
            norm_num_groups=32,
            sample_size=32,
        ),
        "vae": dict(block_out_channels=(32, 64), norm_num_groups=16, sample_size=64),
        "text": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
    },
    "sd15": {
        "unet": dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=(
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
            sample_size=64,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), norm_num_groups=32, sample_size=512),
        "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    },
}


@dataclass
class DiffusionComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    source: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> DiffusionComponents:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device=device, **kwargs)
        return self

    def freeze(self) -> DiffusionComponents:
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def pipeline(self) -> StableDiffusionPipeline:
        """A diffusers pipeline over these components (no safety checker: medical images)."""
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _build_preset(name: str, seed: int = 0) -> DiffusionComponents:
    preset = PRESETS[name]
    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config_ids(tokenizer), **preset["text"]))
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **preset["unet"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * len(preset["vae"]["block_out_channels"]),
            up_block_types=("UpDecoderBlock2D",) * len(preset["vae"]["block_out_channels"]),
            **preset["vae"],
        )
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, _scheduler(), source=name)


def build_diffusion(
    base: str, revision: str | None = None, dtype: torch.dtype = torch.float32
) -> DiffusionComponents:
    """A preset name ('tiny', 'small'), 'phantom' (the shipped base trained on phantoms of all four
    modalities) or a diffusers SD-1.x pipeline path / hub id."""
    if base in PRESETS:
        components = _build_preset(base)
        return components if dtype == torch.float32 else components.to("cpu", dtype)
    name = base
    if is_phantom(base):
        base, revision = str(phantom_diffusion_dir(base)), None
    kwargs = {"revision": revision, "torch_dtype": dtype}
    try:
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", revision=revision)
        scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler", revision=revision)
    except (OSError, ValueError) as exc:
        hint = "" if Path(base).exists() else f" (not a preset: {', '.join(PRESETS)}; not a local path)"
        raise ModelError(f"cannot load diffusion model {base!r}{hint}: {exc}") from None
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, scheduler, source=name)


def save_diffusion(components: DiffusionComponents, path: str | Path) -> None:
    """Save in the diffusers layout, loadable by `build_diffusion(path)` and `StableDiffusionPipeline`."""
    components.pipeline().save_pretrained(str(path), safe_serialization=True)
