"""`craft pretrain vlm`: a small CLIP model (transformers `CLIPModel`, the project's offline
tokenizer) trained on phantoms of one modality so the CAS phrase pairs mean something.

The loss is the CAS read-out itself: for every phrase pair the dimensions score with, P(present) =
sigmoid(scale * (cos(image, present) - cos(image, absent))) is fitted to the ground truth (binary
cross-entropy): the labels' finding pairs, each checklist item against the phantoms' item ground
truth, each anatomy/realism item against what a defect or corruption violates; plus softmax
contrasts of the modality phrases against other modalities and distractor pictures, and CLIP's
image-to-text InfoNCE over the label prompts of the batch.

Options, each recorded in the model card: an architecture preset (`reward`, today's; `eval`, an
independent evaluator of another width, depth and patch size), the data seed (the seed plan keeps
reward, evaluator, classifier and gates apart), a share of implausible training phantoms,
augmentation (`augment.Augment`) and adversarial training (`augment.adversarial`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import MODALITIES, dataset_for_modality
from craft_ray.models.tokenizer import text_config_ids, tiny_clip_tokenizer
from craft_ray.models.vlm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, _from_clip, prepare_pixels
from craft_ray.pretrain.augment import Augment, adversarial
from craft_ray.pretrain.gates import GATE_SEED, vlm_gate, vlm_gate_passes
from craft_ray.pretrain.phantom_tensors import corrupt, make_distractors, make_phantom_set
from craft_ray.pretrain.vlm_texts import VLMTexts

VLM_DATA_SEED = 200  # reward VLM's phantoms; other modalities' negatives use data seed + 1
EVAL_VLM_DATA_SEED = 400  # the evaluation VLM's: disjoint from the reward's and the classifier's (300)
# data seeds a VLM must not train on (nor on seed + 1): the demo's data, the classifier's, the gates'
RESERVED_SEEDS = {0: "the demo's data", 300: "the out-of-family classifier's data", GATE_SEED: "the gates"}
LOSS_WEIGHTS = {"pathology": 2.0, "checklist": 1.0, "section": 1.0, "modality": 0.5, "contrast": 0.5}


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


# `reward`: the shipped reward VLM's architecture. `eval`: an evaluator that shares no weights and
# not the same shape with it: narrower and deeper towers, images resized to 96 px in 12 px patches
# (about the reward's cost per step). `eval-fine80`: the `eval` towers on a finer grid, 80 px in
# 8 px patches (10 x 10 instead of 8 x 8, about 1.3x the cost per step): the dermoscopy evaluator,
# where an 8 x 8 grid read a second, smaller lesion at 0.72 (README: 'The shipped phantom models').
EVAL_ARCH = VLMArch(
    image_size=96,
    patch_size=12,
    vision_hidden=80,
    vision_layers=4,
    vision_heads=4,
    text_hidden=80,
    text_layers=3,
    text_heads=4,
    projection_dim=80,
)
ARCH_PRESETS = {
    "reward": VLMArch(),
    "eval": EVAL_ARCH,
    "eval-fine80": EVAL_ARCH.model_copy(update={"image_size": 80, "patch_size": 8}),
}
# preset -> the role its model plays, and each role's data seed: a reward VLM and an evaluation VLM
# never train on the same phantoms
ARCH_ROLES = {"reward": "reward", "eval": "evaluation", "eval-fine80": "evaluation"}
ROLE_DATA_SEEDS = {"reward": VLM_DATA_SEED, "evaluation": EVAL_VLM_DATA_SEED}
DATA_SEEDS = {arch: ROLE_DATA_SEEDS[role] for arch, role in ARCH_ROLES.items()}


def vlm_family(arch_name: str) -> str:
    """The name family a VLM of this preset ships under: `phantom-eval` for an evaluator."""
    return "phantom-eval" if ARCH_ROLES.get(arch_name) == "evaluation" else "phantom"


class VLMPretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    n_train: int = Field(20000, ge=16, description="phantoms of the modality (plausible and implausible)")
    n_negatives: int = Field(1000, ge=4, description="per other modality, distractors, corruptions")
    data_seed: int = VLM_DATA_SEED
    implausible: float = Field(0.2, ge=0.0, le=1.0, description="share of implausible training phantoms")
    size: int = 64
    seed: int = Field(0, description="initialisation, batch order, augmentation")
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=4)
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    gate_n: int = Field(400, ge=16)
    arch_name: str = Field("reward", description="the preset `arch` came from, or 'custom'")
    arch: VLMArch = Field(default_factory=VLMArch)
    augment: Augment | None = None
    adversarial_eps: float = Field(0.0, ge=0.0, le=0.1, description="L-inf radius, pixel units; 0: off")
    adversarial_steps: int = Field(1, ge=1, le=20, description="1: FGSM; more: PGD")

    @field_validator("data_seed")
    @classmethod
    def _seed_plan(cls, seed: int) -> int:
        for reserved, role in RESERVED_SEEDS.items():
            if reserved in (seed, seed + 1):
                raise ValueError(
                    f"data seed {seed} would train on {role} (seed {reserved}; negatives use data seed + 1): "
                    f"choose another (reward VLM {VLM_DATA_SEED}, evaluation VLM {EVAL_VLM_DATA_SEED})"
                )
        return seed

    @model_validator(mode="after")
    def _arch_name(self) -> VLMPretrainConfig:
        if self.arch_name in ARCH_PRESETS and self.arch != ARCH_PRESETS[self.arch_name]:
            self.arch_name = "custom"
        role = ARCH_ROLES.get(self.arch_name)
        for other, seed in ROLE_DATA_SEEDS.items():
            if role not in (None, other) and seed in (self.data_seed - 1, self.data_seed, self.data_seed + 1):
                raise ValueError(
                    f"data seed {self.data_seed} would train this {role} VLM (--arch {self.arch_name}) on the "
                    f"{other} VLM's phantoms (seed {seed}; negatives use data seed + 1): "
                    f"choose another ({role} VLM {ROLE_DATA_SEEDS[role]})"
                )
        return self

    @classmethod
    def from_preset(cls, arch: str, **settings) -> VLMPretrainConfig:
        """The config of an architecture preset; `data_seed` None takes the preset's seed."""
        if arch not in ARCH_PRESETS:
            from craft_ray.errors import ConfigError

            raise ConfigError(f"--arch must be one of {', '.join(ARCH_PRESETS)}, got {arch!r}")
        if settings.get("data_seed") is None:
            settings["data_seed"] = DATA_SEEDS[arch]
        return cls(arch_name=arch, arch=ARCH_PRESETS[arch].model_copy(), **settings)


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


@dataclass
class Targets:
    """What a batch is trained to say. Rows [0, clean_rows) are phantoms of the modality (plausible
    or implausible), the rest negatives."""

    clean_rows: int
    truth: torch.Tensor  # (clean, L) labels over spec.labels
    items: torch.Tensor  # (clean, I) checklist item ground truth (the label where none is drawn)
    prompt_ids: torch.Tensor  # (clean,) label prompt of each phantom
    section: torch.Tensor  # (B, M) anatomy/realism items met
    classes: torch.Tensor  # (B,) index into the class prompts, -1 for none


class _Data:
    """Training images in memory: phantoms of the modality (a share implausible) with their
    label and item ground truth, and negatives (other modalities, distractors, corrupted plausible
    phantoms) with their anatomy/realism targets and modality classes (-1: no class)."""

    def __init__(self, cfg: VLMPretrainConfig, texts: VLMTexts, log: Callable[[str], None]):
        spec = dataset_for_modality(cfg.modality)
        log(f"generating {cfg.n_train} {cfg.modality} phantoms and the negatives (about a minute per 20 000)")
        self.clean = make_phantom_set(cfg.modality, cfg.n_train, cfg.data_seed, cfg.size, cfg.implausible)
        implausible = self.clean.implausible
        log(
            f"{len(self.clean)} {cfg.modality} phantoms (seed {cfg.data_seed}), "
            f"{int(implausible.sum())} of them implausible"
        )
        self.truth = self.clean.targets(list(spec.labels))
        drawn, known = self.clean.item_targets(texts.item_ids)
        self.items = torch.where(known, drawn, self.truth[:, texts.item_label])
        self.item_coverage = known.float().mean(dim=0)  # share of phantoms with ground truth per item
        self.clean_section, _ = self.clean.item_targets(texts.modality_item_ids)
        self.own_class = texts.modality_class[cfg.modality]
        realism = torch.tensor([i.split(":")[1] == "realism" for i in texts.modality_item_ids])
        # an acquisition artefact makes the image no longer a plain picture of the modality
        no_class = (self.clean_section[:, realism] < 0.5).any(dim=1)
        self.clean_class = torch.where(no_class, -1, self.own_class)
        self.prompt_ids = texts.label_prompt_ids(self.clean.label_sets)
        negatives, classes, section = [], [], []
        m = len(texts.modality_item_ids)
        for modality in MODALITIES:
            if modality != cfg.modality:
                other = make_phantom_set(modality, cfg.n_negatives, cfg.data_seed + 1, cfg.size)
                negatives.append(other.images)
                classes += [texts.modality_class[modality]] * len(other)
                section.append(torch.zeros(len(other), m))
        distractors, kinds = make_distractors(cfg.n_negatives, cfg.data_seed, cfg.size)
        negatives.append(distractors)
        classes += [texts.distractor_class(int(k)) for k in kinds]
        section.append(torch.zeros(len(distractors), m))
        plausible = torch.nonzero(~implausible).flatten()[: cfg.n_negatives]
        corrupted, violated = corrupt(self.clean.images[plausible], cfg.data_seed, cfg.modality)
        negatives.append(corrupted)
        classes += [-1] * len(corrupted)
        section.append(
            torch.tensor([[float(i not in v) for i in texts.modality_item_ids] for v in violated]).reshape(
                -1, m
            )
        )
        self.negatives, self.negative_class = torch.cat(negatives), torch.tensor(classes)
        self.negative_section = torch.cat(section)
        log(f"{len(self.negatives)} negatives (other modalities, distractors, corrupted)")

    def targets(self, rows: torch.Tensor, negatives: torch.Tensor) -> Targets:
        return Targets(
            len(rows),
            self.truth[rows],
            self.items[rows],
            self.prompt_ids[rows],
            torch.cat([self.clean_section[rows], self.negative_section[negatives]]),
            torch.cat([self.clean_class[rows], self.negative_class[negatives]]),
        )


def _pair_logits(sim: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    return sim[:, pairs[:, 0]] - sim[:, pairs[:, 1]]


def text_features(model: CLIPModel, token_ids) -> torch.Tensor:
    return F.normalize(model.get_text_features(**token_ids).pooler_output, dim=-1)


def balanced_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the met and the violated entries weighing half each: a defect
    violates one item of ten on a few phantoms of a batch, which a plain mean would drown."""
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    met = targets > 0.5
    if met.all() or not met.any():
        return losses.mean()
    return 0.5 * (losses[met].mean() + losses[~met].mean())


def vlm_loss(
    model: CLIPModel, texts: VLMTexts, txt: torch.Tensor, images: torch.Tensor, targets: Targets
) -> tuple[torch.Tensor, dict[str, float]]:
    """images: (B, 3, H, W) in [0, 1]; txt: the normalised text features of `texts.phrases`."""
    pixels = prepare_pixels(images, model.config.vision_config.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    sim = model.logit_scale.exp().clamp(max=100.0) * img @ txt.T
    clean = sim[: targets.clean_rows]
    parts = {
        "pathology": F.binary_cross_entropy_with_logits(
            _pair_logits(clean, texts.finding_pairs), targets.truth
        ),
        "checklist": F.binary_cross_entropy_with_logits(_pair_logits(clean, texts.item_pairs), targets.items),
    }
    section = _pair_logits(sim, texts.modality_item_pairs)
    own = targets.clean_rows  # phantoms of the modality: balanced, so the few violated items count
    parts["section"] = 0.5 * (
        balanced_bce(section[:own], targets.section[:own])
        + F.binary_cross_entropy_with_logits(section[own:], targets.section[own:])
    )
    keep = targets.classes >= 0
    parts["modality"] = F.cross_entropy(sim[keep][:, texts.class_prompts], targets.classes[keep])
    unique, target = torch.unique(targets.prompt_ids, return_inverse=True)
    parts["contrast"] = F.cross_entropy(clean[:, unique], target)
    loss = sum(LOSS_WEIGHTS[k] * v for k, v in parts.items())
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
    history, step_times = [], []
    for step in range(cfg.steps):
        tick = time.perf_counter()
        rows = torch.randint(len(data.clean), (cfg.batch_size - n_neg,), generator=gen)
        neg = torch.randint(len(data.negatives), (n_neg,), generator=gen)
        images = torch.cat([data.clean.floats(rows), data.negatives[neg].float() / 255.0])
        if cfg.augment is not None:
            images = cfg.augment(images, gen)
        targets = data.targets(rows, neg)
        txt = text_features(model, token_ids)
        loss, parts = vlm_loss(model, texts, txt, images, targets)
        if cfg.adversarial_eps > 0:
            frozen = txt.detach()
            attacked = adversarial(
                images,
                lambda x, t=targets, f=frozen: vlm_loss(model, texts, f, x, t)[0],
                cfg.adversarial_eps,
                cfg.adversarial_steps,
                gen,
            )
            adv_loss, _ = vlm_loss(model, texts, txt, attacked, targets)
            parts["adversarial"] = float(adv_loss.detach())
            loss = 0.5 * (loss + adv_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step_times.append(time.perf_counter() - tick)
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": float(loss.detach()), **parts})
            log(
                f"step {step}/{cfg.steps} [{time.time() - started:.0f} s] loss {float(loss.detach()):.4f} "
                + " ".join(f"{k} {v:.3f}" for k, v in parts.items())
            )
    model.eval()
    defects: dict[str, int] = {}
    for kind in data.clean.defects:
        if kind:
            defects[kind] = defects.get(kind, 0) + 1
    record = {
        "wall_time_s": round(time.time() - started, 1),
        "median_step_s": round(sorted(step_times)[len(step_times) // 2], 4),
        "history": history[-5:],
        "torch_threads": torch.get_num_threads(),
        "machine": _machine(),
        "implausible_images": dict(sorted(defects.items())),
        "items_with_ground_truth": {
            i: round(float(c), 3) for i, c in zip(texts.item_ids, data.item_coverage, strict=True)
        },
        "loss_weights": LOSS_WEIGHTS,
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
