"""Training methods sharing one loop: craft, lora_sft, full_sft, ddpo, pretrained."""

from __future__ import annotations

from craft_ray.errors import ConfigError
from craft_ray.train.methods.base import Method, StepPlan
from craft_ray.train.methods.craft import Craft
from craft_ray.train.methods.ddpo import DDPO
from craft_ray.train.methods.sft import FullSFT, LoraSFT, Pretrained

METHODS: dict[str, type[Method]] = {m.name: m for m in (Craft, LoraSFT, FullSFT, DDPO, Pretrained)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]()
    except KeyError:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(METHODS)})") from None


__all__ = ["METHODS", "Method", "StepPlan", "get_method"]
