"""`craft pretrain classifier`: the out-of-family evaluator `phantom:<modality>` of `evaluation.classifier`.

A `SmallCNN` (craft_ray.models.classifier; a convolutional family, unlike the CLIP ViT reward
model) trained on phantom ground truth of one modality. Its data seed (300) is its own: the reward
VLM trains on seeds 200/201, the diffusion base on 100, the demo's data is seed 0 and every gate
uses 999, so the evaluator and the reward model share neither weights nor training images.

Generated images pass through a VAE, so they are smoother and noisier than phantoms; training
augments with a mild random blur and pixel noise so that the evaluator reads findings rather than
the phantoms' exact pixel statistics. The augmentation was fixed before any generated image was
classified (it is part of the evaluator's design, not tuned on results).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from craft_ray.knowledge.labels import dataset_for_modality
from craft_ray.models.classifier import Classifier, ClassifierCard, fit_classifier
from craft_ray.pretrain.gates import GATE_SEED, auroc
from craft_ray.pretrain.phantom_tensors import make_phantom_set

CLASSIFIER_DATA_SEED = 300
MIN_AUROC = 0.95


class ClassifierPretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    n_train: int = Field(4000, ge=16, description="training phantoms of the modality")
    data_seed: int = CLASSIFIER_DATA_SEED
    size: int = 64
    seed: int = Field(0, description="initialisation and batch order")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=2)
    learning_rate: float = 3e-3
    width: int = Field(32, ge=4, description="channels of the first conv block")
    augment_blur: float = Field(1.0, ge=0, description="max Gaussian blur sigma (px) of the augmentation")
    augment_noise: float = Field(0.03, ge=0, description="max pixel-noise sd (in [0, 1] units)")
    gate_n: int = Field(400, ge=16)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"),
        kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
        groups=c,
    )
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"),
        kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
        groups=c,
    )


def make_augment(
    max_blur: float, max_noise: float
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Per image, with probability 1/2 each: a blur of sigma U(0.3, max_blur) and Gaussian noise of sd
    U(0, max_noise) (inputs are the network's [-1, 1] tensors, so the noise is doubled)."""

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = x.clone()
        n = len(x)
        if max_blur > 0:
            blur = torch.rand(n, generator=gen) < 0.5
            sigmas = 0.3 + torch.rand(n, generator=gen) * max(0.0, max_blur - 0.3)
            for i in torch.nonzero(blur).flatten().tolist():
                out[i : i + 1] = _blur(out[i : i + 1], float(sigmas[i]))
        if max_noise > 0:
            noisy = (torch.rand(n, generator=gen) < 0.5).float().view(-1, 1, 1, 1)
            sd = (torch.rand(n, generator=gen) * max_noise * 2).view(-1, 1, 1, 1)
            out = out + noisy * sd * torch.randn(x.shape, generator=gen)
        return out

    return augment


def train_phantom_classifier(
    cfg: ClassifierPretrainConfig, log: Callable[[str], None] = print
) -> tuple[Classifier, dict]:
    spec = dataset_for_modality(cfg.modality)
    labels = list(spec.phantom_labels)
    started = time.time()
    data = make_phantom_set(cfg.modality, cfg.n_train, cfg.data_seed, cfg.size)
    log(f"{len(data)} {cfg.modality} phantoms (seed {cfg.data_seed})")
    images = data.floats()
    if spec.channels == 1:
        images = images[:, :1]
    card = ClassifierCard(
        dataset=spec.name,
        labels=labels,
        multilabel=spec.multilabel,
        channels=spec.channels,
        resolution=cfg.size,
        width=cfg.width,
        trained_on={
            "origin": "phantom",
            "modality": cfg.modality,
            "images": len(data),
            "data_seed": cfg.data_seed,
        },
    )

    def progress(epoch: int, epochs: int) -> None:
        log(f"epoch {epoch}/{epochs} [{time.time() - started:.0f} s]")

    clf = fit_classifier(
        images,
        data.targets(labels),
        card,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.learning_rate,
        seed=cfg.seed,
        progress=progress,
        augment=make_augment(cfg.augment_blur, cfg.augment_noise),
    )
    record = {"wall_time_s": round(time.time() - started, 1), "torch_threads": torch.get_num_threads()}
    return clf, record


@torch.no_grad()
def classifier_gate(clf: Classifier, modality: str, n: int = 400, seed: int = GATE_SEED) -> dict:
    """Per-label AUROC (one-vs-rest for single-label datasets) and accuracy on n fresh phantoms."""
    spec = dataset_for_modality(modality)
    data = make_phantom_set(modality, n, seed)
    labels = clf.labels
    probs = clf.predict_proba(data.floats())
    truth = data.targets(labels).numpy()
    per_label = {lab: auroc(probs[:, j], truth[:, j]) for j, lab in enumerate(labels)}
    if spec.multilabel:
        accuracy = float(((probs >= 0.5) == (truth > 0.5)).mean())
    else:
        accuracy = float((probs.argmax(axis=1) == truth.argmax(axis=1)).mean())
    valid = [v for v in per_label.values() if v == v]
    return {
        "modality": modality,
        "n": n,
        "seed": seed,
        "auroc": per_label,
        "min_auroc": float(min(valid)),
        "macro_auroc": float(np.mean(valid)),
        "accuracy": accuracy,
        "accuracy_kind": "per-label at 0.5 (multi-label)" if spec.multilabel else "top-1",
    }


def classifier_gate_passes(metrics: dict, min_auroc: float = MIN_AUROC) -> bool:
    values = [v for v in metrics["auroc"].values() if v == v]
    return bool(values) and len(values) == len(metrics["auroc"]) and min(values) >= min_auroc


def pretrain_classifier(
    cfg: ClassifierPretrainConfig, out: Path, command: str, log: Callable[[str], None] = print
) -> dict:
    """Train, gate on held-out phantoms (seed 999), write weights + classifier.json + model card."""
    from craft_ray.pretrain.card import write_card
    from craft_ray.pretrain.vlm import _machine as machine

    clf, record = train_phantom_classifier(cfg, log)
    record["machine"] = machine()
    metrics = classifier_gate(clf, cfg.modality, cfg.gate_n)
    metrics["passes"] = classifier_gate_passes(metrics)
    clf.save(out)
    write_card(out, kind="classifier", config=cfg.model_dump(), record=record, gate=metrics, command=command)
    return metrics
