"""LoRA on the UNet attention through peft, saved in the diffusers format.

A saved directory holds `pytorch_lora_weights.safetensors`, which
`StableDiffusionPipeline.load_lora_weights(dir)` loads onto the base model. The file's metadata
carries the adapter config (rank, alpha, target modules): without it diffusers assumes
alpha = rank, and an adapter trained with alpha != rank would reload at the wrong strength.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from craft_ray.errors import ModelError

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(
    unet: UNet2DConditionModel, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS
) -> list[torch.nn.Parameter]:
    """Freeze the UNet, add a LoRA adapter on the attention projections, return its parameters."""
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )
    try:
        unet.add_adapter(config)
    except ValueError as exc:
        raise ModelError(f"cannot add LoRA to the UNet (targets {list(targets)}): {exc}") from None
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights, keyed as diffusers expects them."""
    unet = getattr(unet, "module", unet)  # unwrap DDP
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def lora_config(unet: UNet2DConditionModel, adapter_name: str = "default") -> dict:
    """The adapter's peft config as plain data (what diffusers stores as LoRA metadata)."""
    unet = getattr(unet, "module", unet)
    return unet.peft_config[adapter_name].to_dict()


def lora_summary(unet: UNet2DConditionModel) -> dict:
    """rank, alpha and target modules of the UNet's adapter (for model cards)."""
    config = lora_config(unet)
    return {
        "rank": int(config["r"]),
        "alpha": float(config["lora_alpha"]),
        "targets": sorted(config["target_modules"]),
    }


def save_lora(unet: UNet2DConditionModel, directory: str | Path) -> Path:
    directory = Path(directory)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in lora_state_dict(unet).items()}
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise ModelError("refusing to save LoRA weights with NaN or Inf values")
    StableDiffusionPipeline.save_lora_weights(
        str(directory),
        unet_lora_layers=state,
        safe_serialization=True,
        unet_lora_adapter_metadata=lora_config(unet),
    )
    return directory / LORA_WEIGHTS_NAME


def load_lora_into(pipe: StableDiffusionPipeline, directory: str | Path, adapter_name: str = "craft") -> None:
    """Load a saved LoRA onto a pipeline (what a user does with a finished run)."""
    path = Path(directory)
    if not (path / LORA_WEIGHTS_NAME).is_file():
        raise ModelError(f"no {LORA_WEIGHTS_NAME} in {path}")
    pipe.load_lora_weights(str(path), adapter_name=adapter_name)
