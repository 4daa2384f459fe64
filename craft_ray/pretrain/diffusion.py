"""`craft pretrain diffusion`: the phantom diffusion base, one model for all four modalities.

Like a general-purpose foundation model that knows what a chest radiograph or a fundus photograph
looks like but not the clinical labels, it is trained on phantoms of every modality captioned with
the modality phrase only (`DatasetSpec.modality_phrase`, no findings); the adaptation methods then
learn the labels. Two stages: a small AutoencoderKL (64 px -> 16x16x4 latents, scale factor 4),
then a small UNet2DConditionModel on its latents (epsilon prediction, 10 % empty captions for
classifier-free guidance). The text encoder is a small CLIP text model over the project's
tokenizer, seeded and frozen, so every word of a label prompt keeps a distinct representation for
LoRA to learn from. Saved in the diffusers layout that `build_diffusion` loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from pydantic import BaseModel, ConfigDict, Field
from transformers import CLIPTextConfig, CLIPTextModel

from craft_ray.knowledge.labels import MODALITIES
from craft_ray.models.diffusion import DiffusionComponents, _scheduler
from craft_ray.models.tokenizer import text_config_ids, tiny_clip_tokenizer
from craft_ray.pretrain.phantom_tensors import make_phantom_set
from craft_ray.pretrain.vlm import _machine, _warmup_cosine

DIFFUSION_DATA_SEED = 100


class DiffusionArch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_layers_per_block: int = 1
    # cross-attention per UNet level: none at 16x16, where self-attention over 256 positions
    # triples the cost on CPU; LoRA's to_q/to_k/to_v/to_out.0 sit at the 8x8 level
    unet_attention: tuple[bool, ...] = (False, True, False)
    # (8, 16, 32) under-fits fine detail (vessels, nuclei) and colour; 16 channels at full
    # resolution cost ~2x per step and reconstruct every modality
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    text_hidden: int = 64
    text_layers: int = 2


class DiffusionPretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_per_modality: int = Field(3000, ge=4)
    data_seed: int = DIFFUSION_DATA_SEED
    size: int = 64
    seed: int = 0
    vae_steps: int = Field(3000, ge=1)
    vae_batch_size: int = 16
    vae_learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = Field(8000, ge=1)
    unet_batch_size: int = 16
    unet_learning_rate: float = 1e-3
    uncond_prob: float = 0.1
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of the UNet weights (what ships)")
    preview_every: int = Field(500, ge=1, description="steps between preview PNGs written to the output")
    gate_samples: int = Field(16, ge=1, description="samples per modality for the gate")
    arch: DiffusionArch = Field(default_factory=DiffusionArch)


def build_components(arch: DiffusionArch, seed: int, size: int = 64) -> DiffusionComponents:
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **text_config_ids(tokenizer),
            hidden_size=arch.text_hidden,
            intermediate_size=2 * arch.text_hidden,
            num_hidden_layers=arch.text_layers,
            num_attention_heads=4,
        )
    )
    levels = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=arch.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=size,
    )
    unet = UNet2DConditionModel(
        sample_size=size // 2 ** (levels - 1),
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.unet_attention),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.unet_attention)
        ),
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return DiffusionComponents(unet, vae, text_encoder, tokenizer, _scheduler(), source="phantom")


def phantom_corpus(
    cfg: DiffusionPretrainConfig, log: Callable[[str], None]
) -> tuple[torch.Tensor, list[str]]:
    """All four modalities' phantoms as (N, 3, H, W) uint8 with generic captions (modality phrase)."""
    images, captions = [], []
    for modality, spec in MODALITIES.items():
        data = make_phantom_set(modality, cfg.n_per_modality, cfg.data_seed, cfg.size)
        images.append(data.images)
        captions += [spec.modality_phrase] * len(data)
        log(f"{len(data)} {modality} phantoms (seed {cfg.data_seed})")
    return torch.cat(images), captions


def train_vae(
    vae: AutoencoderKL, images: torch.Tensor, cfg: DiffusionPretrainConfig, log, preview=None
) -> list[dict]:
    """L2 + L1 reconstruction with a tiny KL weight (latents stay near a Gaussian scale only).
    `preview(vae, step)`, when given, is called every `cfg.preview_every` steps and at the end."""
    vae.train()
    started = time.time()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(100, cfg.vae_steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for step in range(cfg.vae_steps):
        x = images[torch.randint(len(images), (cfg.vae_batch_size,), generator=gen)].float() / 127.5 - 1
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        loss = rec + cfg.kl_weight * dist.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            history.append({"step": step, "recon": float(rec.detach())})
            log(
                f"vae step {step}/{cfg.vae_steps} [{time.time() - started:.0f} s] recon {float(rec.detach()):.4f}"
            )
        if preview is not None and (step % cfg.preview_every == 0 or step == cfg.vae_steps - 1):
            vae.eval()
            preview(vae, step)
            vae.train()
    vae.eval()
    return history


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds of every image; sets the VAE's scaling factor to 1 / std(latents)."""
    means, stds = [], []
    for i in range(0, len(images), 256):
        dist = vae.encode(images[i : i + 256].float() / 127.5 - 1).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return mean, std


def train_unet(
    components: DiffusionComponents, latents, captions: list[str], cfg, log, preview=None
) -> list[dict]:
    """Epsilon prediction on VAE latents; the UNet ends with its EMA weights.
    `preview(components, step)` as in `train_vae` (with the EMA weights swapped in)."""
    from diffusers.training_utils import EMAModel

    mean, std = latents
    scale = components.vae.config.scaling_factor
    phrases = sorted(set(captions)) + [""]
    cond_table = components.encode_prompts(phrases)
    caption_ids = torch.tensor([phrases.index(c) for c in captions])
    unet, scheduler = components.unet, components.scheduler
    unet.train()
    started = time.time()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(200, cfg.unet_steps))
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    history = []
    for step in range(cfg.unet_steps):
        rows = torch.randint(len(mean), (cfg.unet_batch_size,), generator=gen)
        z0 = (mean[rows] + std[rows] * torch.randn(mean[rows].shape, generator=gen)) * scale
        ids = caption_ids[rows].clone()
        ids[torch.rand(len(rows), generator=gen) < cfg.uncond_prob] = len(phrases) - 1
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(rows),), generator=gen)
        pred = unet(scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=cond_table[ids]).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            history.append({"step": step, "loss": float(loss.detach())})
            log(
                f"unet step {step}/{cfg.unet_steps} [{time.time() - started:.0f} s] loss {float(loss.detach()):.4f}"
            )
        if preview is not None and step > 0 and step % (4 * cfg.preview_every) == 0:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
            unet.eval()
            preview(components, step)
            ema.restore(unet.parameters())
            unet.train()
    ema.copy_to(unet.parameters())
    unet.eval()
    return history


def train_diffusion(
    cfg: DiffusionPretrainConfig, log: Callable[[str], None] = print, preview_dir: Path | None = None
) -> tuple[DiffusionComponents, dict]:
    """Both stages; with `preview_dir`, reconstructions (`vae_reconstructions.png`: real rows over
    reconstructed rows) and samples (`unet_samples.png`) are written there while training runs."""
    started = time.time()
    images, captions = phantom_corpus(cfg, log)
    components = build_components(cfg.arch, cfg.seed, cfg.size)
    components.text_encoder.requires_grad_(False).eval()
    vae_preview = unet_preview = None
    if preview_dir is not None:
        vae_preview = partial(
            _preview_reconstructions, images, cfg, preview_dir / "vae_reconstructions.png", log
        )
        unet_preview = partial(_preview_samples, preview_dir / "unet_samples.png", log)
    vae_history = train_vae(components.vae, images, cfg, log, vae_preview)
    vae_time = time.time() - started
    latents = encode_latents(components.vae, images)
    unet_history = train_unet(components, latents, captions, cfg, log, unet_preview)
    components.freeze()
    record = {
        "wall_time_s": round(time.time() - started, 1),
        "vae_wall_time_s": round(vae_time, 1),
        "vae_history": vae_history[-3:],
        "unet_history": unet_history[-3:],
        "parameters": {
            name: sum(p.numel() for p in m.parameters())
            for name, m in (
                ("unet", components.unet),
                ("vae", components.vae),
                ("text_encoder", components.text_encoder),
            )
        },
        "torch_threads": torch.get_num_threads(),
        "machine": _machine(),
    }
    return components, record


@torch.no_grad()
def _preview_reconstructions(images, cfg, path: Path, log, vae: AutoencoderKL, step: int) -> None:
    per = 8
    rows = torch.cat([torch.arange(per) + k * cfg.n_per_modality for k in range(len(MODALITIES))])
    x = images[rows].float() / 127.5 - 1
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    grid = {}
    for k, modality in enumerate(MODALITIES):
        grid[modality] = (x[k * per : (k + 1) * per] + 1) / 2
        grid[f"{modality} recon"] = (recon[k * per : (k + 1) * per] + 1) / 2
    save_grid(grid, path)
    log(f"vae step {step}: reconstructions -> {path}")


def _preview_samples(path: Path, log, components: DiffusionComponents, step: int) -> None:
    from craft_ray.pretrain.gates import diffusion_samples

    samples = {m: diffusion_samples(components, s.modality_phrase, 8, 0) for m, s in MODALITIES.items()}
    save_grid(samples, path)
    log(f"unet step {step}: samples -> {path}")


def save_grid(samples: dict[str, torch.Tensor], path) -> None:
    """One row per modality: a PNG to look at."""
    import numpy as np
    from PIL import Image

    rows = [torch.cat(list(images.clamp(0, 1)), dim=2) for images in samples.values()]
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(path)


def pretrain_diffusion(
    cfg: DiffusionPretrainConfig, out, command: str, log: Callable[[str], None] = print
) -> dict:
    """Train, save (diffusers layout), gate on generated samples, write the card and a sample grid."""
    from craft_ray.models.diffusion import save_diffusion
    from craft_ray.pretrain.card import write_card
    from craft_ray.pretrain.gates import diffusion_gate

    components, record = train_diffusion(cfg, log, preview_dir=Path(out))
    save_diffusion(components, out)
    metrics, samples = diffusion_gate(components, cfg.gate_samples)
    metrics["passes"] = metrics["modality_accuracy"] >= 0.9
    save_grid(samples, out / "samples.png")
    write_card(out, kind="diffusion", config=cfg.model_dump(), record=record, gate=metrics, command=command)
    return metrics
