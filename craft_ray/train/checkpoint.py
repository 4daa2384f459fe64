"""Training checkpoints: the trained weights in diffusers format plus everything needed to resume.

    <checkpoint>/lora/pytorch_lora_weights.safetensors   LoRA methods (StableDiffusionPipeline.load_lora_weights)
    <checkpoint>/unet/                                   full_sft (UNet2DConditionModel.from_pretrained)
    <checkpoint>/model.json                              base model, method, adapter kind, step
    <checkpoint>/trainer_state.pt                        optimiser, LR scheduler, step, RNG, counters
    <checkpoint>/config.yaml                             the experiment config

`trainer_state.pt` holds tensors and plain containers only and is read with `weights_only=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import convert_unet_state_dict_to_peft
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from craft_ray.config import ExperimentConfig
from craft_ray.errors import ConfigError, ModelError, TrainingError
from craft_ray.models.lora import LORA_WEIGHTS_NAME, lora_summary, save_lora
from craft_ray.train.context import unwrap

STATE_NAME = "trainer_state.pt"
MODEL_CARD = "model.json"


def write_checkpoint(
    directory: Path,
    cfg: ExperimentConfig,
    adapter: str | None,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any,
    step: int,
    counters: dict[str, float],
    method_state: dict[str, Any] | None = None,
) -> None:
    unet = unwrap(unet)
    try:
        if adapter == "lora":
            save_lora(unet, directory / "lora")
        elif adapter == "unet":
            if not all(torch.isfinite(p).all() for p in unet.parameters()):
                raise ModelError("refusing to save UNet weights with NaN or Inf values")
            unet.save_pretrained(str(directory / "unet"), safe_serialization=True)
    except ModelError as exc:
        raise TrainingError(f"step {step}: {exc}") from None
    state = {
        "step": step,
        "counters": counters,
        "torch_rng": torch.get_rng_state(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "method": dict(method_state or {}),
    }
    torch.save(state, directory / STATE_NAME)
    card = {
        "base": cfg.model.base,
        "revision": cfg.model.revision,
        "method": cfg.method,
        "adapter": adapter,
        "adapter_path": {"lora": "lora", "unet": "unet"}.get(adapter or ""),
        "step": step,
        "dataset": cfg.dataset.name,
        "labels": list(cfg.dataset.label_space),
        "resolution": cfg.dataset.resolution,
    }
    if adapter == "lora":
        card["lora"] = lora_summary(unet)  # also in the safetensors metadata, which diffusers reads
    (directory / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    (directory / "config.yaml").write_text(cfg.to_yaml())


def restore_checkpoint(
    directory: Path,
    adapter: str | None,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    lr_scheduler: Any,
) -> tuple[int, dict[str, float]]:
    """Load weights, optimiser and scheduler state into the live objects; return (step, counters)."""
    unet = unwrap(unet)
    card = read_model_card(directory)
    if adapter == "lora" and card.get("lora") and card["lora"] != lora_summary(unet):
        raise TrainingError(
            f"cannot resume from {directory}: its LoRA is {card['lora']}, the config asks for {lora_summary(unet)}"
        )
    try:
        if adapter == "lora":
            load_lora_weights(unet, directory / "lora")
        elif adapter == "unet":
            unet.load_state_dict(load_file(str(directory / "unet" / "diffusion_pytorch_model.safetensors")))
        state = torch.load(directory / STATE_NAME, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, KeyError) as exc:
        raise TrainingError(f"cannot resume from checkpoint {directory}: {exc}") from None
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and state["lr_scheduler"] is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), dict(state["counters"])


def load_lora_weights(unet: torch.nn.Module, lora_dir: Path) -> None:
    """A saved diffusers-format LoRA into the live peft adapter of `unet` (same shape)."""
    weights = load_file(str(lora_dir / LORA_WEIGHTS_NAME))
    weights = {k.removeprefix("unet."): v for k, v in weights.items()}
    result = set_peft_model_state_dict(
        unwrap(unet), convert_unet_state_dict_to_peft(weights), adapter_name="default"
    )
    if getattr(result, "unexpected_keys", None):
        raise TrainingError(f"{lora_dir}: LoRA keys do not match the model: {result.unexpected_keys[:3]}")


def warm_start(unet: torch.nn.Module, source: str) -> Path:
    """`model.init_lora`: start the LoRA from a run's `final/` (a run directory), a checkpoint
    directory, or a LoRA directory; its shape must be the config's. Returns the LoRA directory."""
    path = Path(source)
    for candidate in (path / "final", path):
        if (candidate / MODEL_CARD).is_file():
            card = read_model_card(candidate)
            if card.get("adapter") != "lora":
                raise ConfigError(
                    f"model.init_lora {source}: {candidate} holds no LoRA (adapter {card.get('adapter')!r})"
                )
            if card.get("lora") and card["lora"] != lora_summary(unwrap(unet)):
                raise ConfigError(
                    f"model.init_lora {source}: its LoRA is {card['lora']}, the config asks for {lora_summary(unwrap(unet))}"
                )
            lora_dir = candidate / "lora"
            break
    else:
        lora_dir = path
    if not (lora_dir / LORA_WEIGHTS_NAME).is_file():
        raise ConfigError(
            f"model.init_lora {source}: no {LORA_WEIGHTS_NAME} there (give a run directory, a checkpoint or a LoRA directory)"
        )
    try:
        load_lora_weights(unet, lora_dir)
    except (OSError, RuntimeError, KeyError) as exc:
        raise ConfigError(f"model.init_lora {source}: cannot load its LoRA ({exc})") from None
    return lora_dir


def read_method_state(directory: Path) -> dict[str, Any]:
    """The method's own state of a checkpoint (e.g. CRAFT's running gradient-norm average); empty
    for checkpoints written before methods had state."""
    state = torch.load(directory / STATE_NAME, weights_only=True, map_location="cpu")
    return dict(state.get("method") or {})


def is_complete(directory: Path) -> bool:
    """A checkpoint whose writing finished: model card, loadable trainer state, adapter weights."""
    try:
        card = json.loads((directory / MODEL_CARD).read_text())
        torch.load(directory / STATE_NAME, weights_only=True, map_location="cpu")
    except (OSError, ValueError, RuntimeError):
        return False
    weights = {
        "lora": directory / "lora" / LORA_WEIGHTS_NAME,
        "unet": directory / "unet" / "diffusion_pytorch_model.safetensors",
    }
    return card.get("adapter") is None or weights[card["adapter"]].is_file()


def read_model_card(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MODEL_CARD
    if not path.is_file():
        raise TrainingError(f"{directory}: no {MODEL_CARD}; not a craft-ray checkpoint")
    return json.loads(path.read_text())
