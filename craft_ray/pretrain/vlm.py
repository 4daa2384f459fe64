"""`craft pretrain vlm`: a small CLIP model (transformers `CLIPModel`, the project's offline
tokenizer) trained on phantoms of one modality so the CAS phrase pairs mean something.

The loss is the CAS read-out itself: for every phrase pair the dimensions score with, P(present) =
sigmoid(scale * (cos(image, present) - cos(image, absent))) is fitted to the ground truth (binary
cross-entropy), plus softmax contrasts of the modality phrases against other modalities and
distractor pictures, and CLIP's image-to-text InfoNCE over the label prompts of the batch.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import MODALITIES, dataset_for_modality
from craft_ray.models.tokenizer import text_config_ids, tiny_clip_tokenizer
from craft_ray.models.vlm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _from_clip, prepare_pixels
from craft_ray.pretrain.gates import GATE_SEED, vlm_gate, vlm_gate_passes
from craft_ray.pretrain.phantom_tensors import corrupt, make_distractors, make_phantom_set
from craft_ray.pretrain.vlm_texts import VLMTexts

VLM_DATA_SEED = 200  # training phantoms; other modalities' negatives use VLM_DATA_SEED + 1


class VLMArch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 64


class VLMPretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    n_train: int = Field(20000, ge=16, description="clean phantoms of the modality")
    n_negatives: int = Field(1000, ge=4, description="per other modality, distractors, corruptions")
    data_seed: int = VLM_DATA_SEED
    size: int = 64
    seed: int = Field(0, description="initialisation and batch order")
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=4)
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    gate_n: int = Field(400, ge=16)
    arch: VLMArch = Field(default_factory=VLMArch)


def build_clip(arch: VLMArch, seed: int) -> CLIPModel:
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    text = dict(
        hidden_size=arch.text_hidden,
        intermediate_size=2 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
    )
    vision = dict(
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        hidden_size=arch.vision_hidden,
        intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
    )
    config = CLIPConfig(
        text_config={**text_config_ids(tokenizer), **text},
        vision_config=vision,
        projection_dim=arch.projection_dim,
    )
    return CLIPModel(config)


class _Data:
    """Training images in memory: clean phantoms, and negatives (other modalities, distractors,
    corrupted phantoms) with their modality-class targets (-1: no class, i.e. corrupted)."""

    def __init__(self, cfg: VLMPretrainConfig, texts: VLMTexts, log: Callable[[str], None]):
        spec = dataset_for_modality(cfg.modality)
        self.clean = make_phantom_set(cfg.modality, cfg.n_train, cfg.data_seed, cfg.size)
        log(f"{len(self.clean)} {cfg.modality} phantoms (seed {cfg.data_seed})")
        self.truth = self.clean.targets(list(spec.labels))
        self.prompt_ids = texts.label_prompt_ids(self.clean.label_sets)
        negatives, classes = [], []
        for modality in MODALITIES:
            if modality != cfg.modality:
                other = make_phantom_set(modality, cfg.n_negatives, cfg.data_seed + 1, cfg.size)
                negatives.append(other.images)
                classes += [texts.modality_class[modality]] * len(other)
        distractors, kinds = make_distractors(cfg.n_negatives, cfg.data_seed, cfg.size)
        negatives.append(distractors)
        classes += [texts.distractor_class(int(k)) for k in kinds]
        negatives.append(corrupt(self.clean.images[: cfg.n_negatives], cfg.data_seed, spec.channels == 1))
        classes += [-1] * cfg.n_negatives
        self.negatives, self.negative_class = torch.cat(negatives), torch.tensor(classes)
        self.own_class = texts.modality_class[cfg.modality]
        log(f"{len(self.negatives)} negatives (other modalities, distractors, corrupted)")

    def classes(self, clean_rows: int, negatives: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full((clean_rows,), self.own_class), self.negative_class[negatives]])


def _pair_logits(sim: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return sim[:, pairs[:, 0]] - sim[:, pairs[:, 1]]


def vlm_loss(
    model: CLIPModel, texts: VLMTexts, token_ids, images, clean_rows: int, truth, prompt_ids, classes
) -> tuple[torch.Tensor, dict[str, float]]:
    """images: (B, 3, H, W) in [0, 1], the first `clean_rows` clean phantoms with `truth` (their
    label columns) and `prompt_ids`, the rest negatives; `classes`: (B,) index into the class
    prompts, -1 for a corrupted phantom (no class)."""
    pixels = prepare_pixels(images, model.config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    txt = F.normalize(model.get_text_features(**token_ids).pooler_output, dim=-1)
    sim = model.logit_scale.exp().clamp(max=100.0) * img @ txt.T
    clean = sim[:clean_rows]
    pathology = F.binary_cross_entropy_with_logits(_pair_logits(clean, texts.finding_pairs), truth)
    checklist = F.binary_cross_entropy_with_logits(
        _pair_logits(clean, texts.item_pairs), truth[:, texts.item_label]
    )
    is_clean = torch.zeros(len(sim), texts.modality_item_pairs.shape[0])
    is_clean[:clean_rows] = 1.0
    section = F.binary_cross_entropy_with_logits(_pair_logits(sim, texts.modality_item_pairs), is_clean)
    keep = classes >= 0
    modality = F.cross_entropy(sim[keep][:, texts.class_prompts], classes[keep])
    unique, target = torch.unique(prompt_ids, return_inverse=True)
    contrast = F.cross_entropy(clean[:, unique], target)
    loss = 2.0 * pathology + 0.5 * (checklist + section + modality + contrast)
    parts = dict(
        pathology=pathology, checklist=checklist, section=section, modality=modality, contrast=contrast
    )
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def train_vlm(cfg: VLMPretrainConfig, log: Callable[[str], None] = print) -> tuple[CLIPModel, dict]:
    """Train; returns the model and a record of what was done (for the model card)."""
    started = time.time()
    spec = dataset_for_modality(cfg.modality)
    texts = VLMTexts.build(spec, load_knowledge())
    data = _Data(cfg, texts, log)
    tokenizer = tiny_clip_tokenizer()
    token_ids = dict(tokenizer(texts.phrases.texts, padding=True, return_tensors="pt"))
    model = build_clip(cfg.arch, cfg.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_steps, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    n_neg = max(4, cfg.batch_size // 4)
    history = []
    for step in range(cfg.steps):
        rows = torch.randint(len(data.clean), (cfg.batch_size - n_neg,), generator=gen)
        neg = torch.randint(len(data.negatives), (n_neg,), generator=gen)
        images = torch.cat([data.clean.floats(rows), data.negatives[neg].float() / 255.0])
        loss, parts = vlm_loss(
            model,
            texts,
            token_ids,
            images,
            len(rows),
            data.truth[rows],
            data.prompt_ids[rows],
            data.classes(len(rows), neg),
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": float(loss.detach()), **parts})
            log(
                f"step {step}/{cfg.steps} [{time.time() - started:.0f} s] loss {float(loss.detach()):.4f} "
                + " ".join(f"{k} {v:.3f}" for k, v in parts.items())
            )
    model.eval()
    record = {
        "wall_time_s": round(time.time() - started, 1),
        "history": history[-5:],
        "torch_threads": torch.get_num_threads(),
        "machine": _machine(),
    }
    return model, record


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


def _machine() -> str:
    import os

    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}".strip()


def scorer_of(model: CLIPModel, name: str):
    return _from_clip(model, tiny_clip_tokenizer(), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, name)


def save_vlm(model: CLIPModel, directory: Path) -> None:
    """CLIPModel + tokenizer + image processor: loadable by `build_vlm(directory)`."""
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer = tiny_clip_tokenizer()
    tokenizer.save_pretrained(str(directory))
    size = model.config.vision_config.image_size
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    ).save_pretrained(str(directory))


def pretrain_vlm(cfg: VLMPretrainConfig, out: Path, command: str, log: Callable[[str], None] = print) -> dict:
    """Train, gate on held-out phantoms, write weights + card into `out` (a fresh directory)."""
    from craft_ray.pretrain.card import write_card

    model, record = train_vlm(cfg, log)
    metrics = vlm_gate(scorer_of(model, f"phantom:{cfg.modality}"), cfg.modality, cfg.gate_n, GATE_SEED)
    metrics["passes"] = vlm_gate_passes(metrics)
    log(json.dumps({k: v for k, v in metrics.items()}, indent=1))
    save_vlm(model, out)
    write_card(out, kind="vlm", config=cfg.model_dump(), record=record, gate=metrics, command=command)
    return metrics
