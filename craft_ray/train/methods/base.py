"""The method interface: how a training method turns a step into micro-batches and losses.

The loop (`craft_ray.train.loop`) owns everything else: optimiser, accumulation, clipping,
non-finite guards, checkpoints, metrics and resume. A method says which parameters it trains
(`adapter`), whether it needs the CAS reward, how a step splits into micro-batches (`plan`) and
the loss of one micro-batch (`loss`).

A step is usually one optimiser update; DDPO makes several per sampling round (so its importance
ratios move away from 1), which `updates_per_step` declares up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from craft_ray.config import ExperimentConfig
from craft_ray.models.diffusion import DiffusionComponents
from craft_ray.models.lora import add_lora
from craft_ray.train.context import TrainContext


@dataclass
class StepPlan:
    updates: list[list[Any]]  # optimiser updates of the step, each a list of micro-batches
    metrics: dict[str, float] = field(default_factory=dict)  # step-level metrics (e.g. sampled rewards)


class Method:
    name: str = ""
    adapter: Literal["lora", "unet"] | None = "lora"  # what is trained and saved
    uses_reward: bool = False
    reward_with_mllm: bool = False  # the reward takes the evaluation path (MLLM when configured)

    def trainable_parameters(
        self, components: DiffusionComponents, cfg: ExperimentConfig
    ) -> list[torch.nn.Parameter]:
        if self.adapter == "lora":
            return add_lora(
                components.unet, cfg.model.lora_rank, cfg.model.effective_lora_alpha, cfg.model.lora_targets
            )
        if self.adapter == "unet":
            components.unet.requires_grad_(True)
            return list(components.unet.parameters())
        return []

    def setup(self, ctx: TrainContext) -> None:
        """Called once the context exists (build samplers and the like)."""

    def updates_per_step(self, cfg: ExperimentConfig) -> int:
        """How many optimiser updates a step makes (known before planning, so every rank agrees)."""
        return 1

    def plan(self, ctx: TrainContext, step: int) -> StepPlan:
        """Default: one update of `grad_accum` micro-batches of dataset rows."""
        return StepPlan([[ctx.batch(step, micro) for micro in range(ctx.cfg.training.grad_accum)]])

    def loss(
        self, ctx: TrainContext, micro_batch: Any, step: int, index: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def end_step(self, metrics: dict[str, Any]) -> None:
        """Called after every step with its metrics averaged over the ranks (the same on every rank)."""

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the weights and the optimiser, kept in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
