"""Model builders shared by training, evaluation and serving: diffusion + LoRA, VLM and MLLM scorers."""

from craft_ray.models.diffusion import PRESETS, DiffusionComponents, build_diffusion, save_diffusion
from craft_ray.models.lora import LORA_WEIGHTS_NAME, add_lora, load_lora_into, lora_state_dict, save_lora
from craft_ray.models.mllm import MLLMScorer, RemoteMLLMScorer, build_mllm
from craft_ray.models.vlm import VLMScorer, build_vlm

__all__ = [
    "LORA_WEIGHTS_NAME",
    "PRESETS",
    "DiffusionComponents",
    "MLLMScorer",
    "RemoteMLLMScorer",
    "VLMScorer",
    "add_lora",
    "build_diffusion",
    "build_mllm",
    "build_vlm",
    "load_lora_into",
    "lora_state_dict",
    "save_diffusion",
    "save_lora",
]
