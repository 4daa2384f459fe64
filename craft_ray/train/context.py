"""What every training method works with: models, data, prompts, seeds, the reward.

All randomness in a step comes from generators seeded by (seed, rank, step, micro-batch, purpose),
so a step computes the same thing whether the run went straight through, was restarted after a
worker failure, or was resumed: resuming needs no data-loader or RNG state beyond the step.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from craft_ray.cas.calibration import Calibration
from craft_ray.cas.channels import to_modality_channels
from craft_ray.cas.score import CASEvaluator, EvaluatorSpec, build_evaluator
from craft_ray.config import ExperimentConfig
from craft_ray.data.reading import ImageParquetDataset
from craft_ray.errors import DataError
from craft_ray.knowledge.labels import DatasetSpec, get_dataset
from craft_ray.knowledge.prompts import Enricher, build_prompt, enricher_for
from craft_ray.models.diffusion import DiffusionComponents
from craft_ray.train.precision import autocast
from craft_ray.train.session import TrainSession

PURPOSES = {
    "noise": 0,
    "timestep": 1,
    "truncation": 2,
    "prompt": 3,
    "vae": 4,
    "dropout": 5,
    "sampler": 6,
    "augment": 7,
}


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(derive_seed(seed, 7, epoch)).permutation(n)


def batch_rows(
    n: int, seed: int, step: int, micro: int, rank: int, world: int, batch: int, accum: int
) -> list[int]:
    """Row indices of one worker's micro-batch: consecutive slices of a seeded permutation per epoch,
    so the workers together see every row once per epoch, and a step's rows depend on the step only."""
    start = ((step * accum + micro) * world + rank) * batch
    rows = []
    for k in range(start, start + batch):
        epoch, pos = divmod(k, n)
        rows.append(int(_epoch_permutation(n, seed, epoch)[pos]))
    return rows


def limit_positives(rows: list[int], label_sets: list[list[str]], limit: int, seed: int) -> list[int]:
    """A seeded subset of `rows` in which no label has more than `limit` images: rows are visited
    in a seeded order and kept while every one of their labels is under its limit. The subset
    depends on the data seed alone (`seed`), so every method of an experiment sees the same images."""
    counts: dict[str, int] = {}
    keep = []
    for r in np.random.default_rng(derive_seed(seed, 13)).permutation(rows):
        labels = label_sets[int(r)]
        if all(counts.get(label, 0) < limit for label in labels):
            keep.append(int(r))
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
    return sorted(keep)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


@dataclass
class TrainContext:
    cfg: ExperimentConfig
    session: TrainSession
    components: DiffusionComponents
    unet: torch.nn.Module  # prepared by the session (DDP when several workers)
    trainable: list[torch.nn.Parameter]
    spec: DatasetSpec = field(init=False)
    data: ImageParquetDataset = field(init=False)
    rows: list[int] = field(init=False)  # rows whose label set is non-empty after the label subset
    enricher: Enricher = field(init=False)
    evaluator: CASEvaluator | None = None
    # the loop's current fp16 loss scale (1 without fp16 weights), for methods taking gradients themselves
    loss_scale: Callable[[], float] = field(default=lambda: 1.0)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.spec = get_dataset(cfg.dataset.name)
        self.data = ImageParquetDataset(
            cfg.dataset.uri,
            cfg.dataset.train_split,
            labels=cfg.dataset.label_space,
            resolution=cfg.dataset.resolution,
            channels=3,
        )
        if self.data.manifest.dataset != cfg.dataset.name:
            raise DataError(
                f"{cfg.dataset.uri} holds dataset '{self.data.manifest.dataset}', the config says '{cfg.dataset.name}'"
            )
        self.label_sets = self.data.label_sets()
        self.rows = [i for i, labels in enumerate(self.label_sets) if labels]
        if not self.rows:
            raise DataError(
                f"{cfg.dataset.uri} [{cfg.dataset.train_split}]: no image has any of {cfg.dataset.label_space}"
            )
        if cfg.dataset.max_positives is not None:
            self.rows = limit_positives(self.rows, self.label_sets, cfg.dataset.max_positives, cfg.seed)
        self.enricher = enricher_for(self.spec, cfg.prompts)

    # -- devices and precision -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.session.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision of every forward pass of a step: sampling (`plan`) and losses alike, so
        that log-probabilities recorded while sampling match those re-computed for the update."""
        return autocast(self.cfg.training, self.device)  # training.weight_dtype / mixed_precision

    # -- randomness ------------------------------------------------------------------------
    def generator(self, step: int, micro: int, purpose: str) -> torch.Generator:
        seed = derive_seed(self.cfg.seed, self.session.rank, step, micro, PURPOSES[purpose])
        return torch.Generator(device=self.device).manual_seed(seed)

    def rng(self, step: int, micro: int, purpose: str) -> random.Random:
        return random.Random(derive_seed(self.cfg.seed, self.session.rank, step, micro, PURPOSES[purpose]))

    # -- data and prompts ------------------------------------------------------------------
    def batch(self, step: int, micro: int, size: int | None = None) -> list[int]:
        t = self.cfg.training
        picks = batch_rows(
            len(self.rows),
            self.cfg.seed,
            step,
            micro,
            self.session.rank,
            self.session.world_size,
            size or t.batch_size,
            t.grad_accum,
        )
        return [self.rows[i] for i in picks]

    def labels_of(self, rows: list[int]) -> list[list[str]]:
        return [self.label_sets[r] for r in rows]

    def prompts(self, label_sets: list[list[str]], step: int, micro: int) -> list[str]:
        rng = self.rng(step, micro, "prompt")
        return [build_prompt(self.spec, labels, self.enricher, rng) for labels in label_sets]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self.components.encode_prompts(prompts)

    def real_pixels(self, rows: list[int]) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] on the device."""
        return torch.stack([self.data[r]["pixel_values"] for r in rows]).to(self.device)

    # -- diffusion pieces shared by the methods --------------------------------------------
    def latent_shape(self, batch: int) -> tuple[int, int, int, int]:
        side = self.cfg.dataset.resolution // self.components.vae_scale_factor
        return (batch, self.components.latent_channels, side, side)

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        with_grad: bool,
    ) -> torch.Tensor:
        """Classifier-free guided UNet prediction; checkpointed when it carries a gradient."""
        scale = self.cfg.training.guidance_scale

        def run(x: torch.Tensor) -> torch.Tensor:
            out = self.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            u, c = out.chunk(2)
            return u + scale * (c - u)

        if with_grad and self.cfg.training.gradient_checkpointing:
            return checkpoint(run, latents, use_reentrant=False)
        return run(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] in the modality's channels (luma for greyscale modalities, as
        evaluation stores them: the reward sees what evaluation sees); the VAE decoder is
        checkpointed on the gradient path."""
        vae = self.components.vae
        scaled = latents / vae.config.scaling_factor

        def run(z: torch.Tensor) -> torch.Tensor:
            return vae.decode(z).sample

        images = (
            checkpoint(run, scaled, use_reentrant=False)
            if torch.is_grad_enabled() and self.cfg.training.gradient_checkpointing
            else run(scaled)
        )
        return to_modality_channels((images / 2 + 0.5).clamp(0, 1), self.spec.channels)

    def denoising_loss(self, rows: list[int], step: int, micro: int) -> torch.Tensor:
        """The standard epsilon / v-prediction loss on real images with their label prompts."""
        components, scheduler = self.components, self.components.scheduler
        pixels = self.real_pixels(rows)
        with torch.no_grad():
            dist = components.vae.encode(pixels * 2 - 1).latent_dist
            latents = (
                dist.sample(generator=self.generator(step, micro, "vae"))
                * components.vae.config.scaling_factor
            )
        labels = self.labels_of(rows)
        prompts = self.prompts(labels, step, micro)
        drop = torch.rand(len(rows), generator=self.generator(step, micro, "dropout"), device=self.device)
        prompts = [
            "" if d < self.cfg.prompts.uncond_prob else p for p, d in zip(prompts, drop.tolist(), strict=True)
        ]
        cond = self.encode(prompts)
        noise = torch.randn(latents.shape, generator=self.generator(step, micro, "noise"), device=self.device)
        t = torch.randint(
            0,
            scheduler.config.num_train_timesteps,
            (len(rows),),
            device=self.device,
            generator=self.generator(step, micro, "timestep"),
        )
        noisy = scheduler.add_noise(latents, noise, t)
        target = (
            scheduler.get_velocity(latents, noise, t)
            if scheduler.config.prediction_type == "v_prediction"
            else noise
        )
        pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
        return F.mse_loss(pred.float(), target.float())


def reward_calibration(cfg: ExperimentConfig) -> Calibration | None:
    """`reward.calibration`, checked against the config's evaluator (same dataset, VLM, labels)."""
    if not cfg.reward.calibration:
        return None
    calibration = Calibration.load(cfg.reward.calibration)
    calibration.check_matches(EvaluatorSpec.from_config(cfg), cfg.reward.calibration, "the config's reward")
    return calibration


def build_evaluator_for(cfg: ExperimentConfig, device: torch.device, with_mllm: bool) -> CASEvaluator:
    """The reward model of a run: the config's evaluator (the MLLM only for evaluation-path rewards,
    checklist overlays from `reward.checklists`), with the realism reference of `reward.calibration`."""
    calibration = reward_calibration(cfg)
    reference = calibration.reference if calibration else None
    return build_evaluator(EvaluatorSpec.from_config(cfg, with_mllm), reference).to(device)
