"""Typed experiment configuration, loaded from YAML.

One `ExperimentConfig` describes a run end to end: which dataset, which base model and evaluators,
which training method with which reward weights, how many workers, and where results go. Every
field has a default or is required on purpose; unknown keys are errors. A YAML file may name
other files under `extends:` (paths relative to it); they are deep-merged in order, then the file's
own keys on top, so `experiments/<dataset>/<method>.yaml` stays a few lines long.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import DATASETS, MODALITIES, get_dataset
from craft_ray.model_names import family_of

METHODS = ("craft", "lora_sft", "full_sft", "ddpo", "pretrained")
CAS_DIMENSIONS = ("pathology", "checklist", "anatomy", "realism")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Strict):
    name: Literal["chexpert", "isic", "fundus", "histopath"]
    uri: str = Field(description="directory (or s3://, gs:// URI) of canonical parquet shards")
    labels: list[str] | None = Field(None, description="label subset to train on; default: all labels")
    resolution: int = Field(64, ge=16, le=2048, description="image side in pixels (square)")
    train_split: str = "train"
    val_split: str = "val"
    max_positives: int | None = Field(
        None,
        ge=1,
        description="the low-data regime: fine-tune on a seeded subset of the training split with at most this "
        "many images per label (every label of an image counts); the reward models keep their own data",
    )

    @field_validator("labels")
    @classmethod
    def _known_labels(cls, labels: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if labels is not None:
            if not labels:
                raise ValueError("must not be empty (omit the key to use all labels)")
            if "name" in info.data:
                try:
                    get_dataset(info.data["name"]).check_labels(labels, where="")
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
        return labels

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, resolution: int) -> int:
        if resolution % 8:
            raise ValueError(f"must be a multiple of 8, got {resolution}")
        return resolution

    @property
    def label_space(self) -> tuple[str, ...]:
        spec = get_dataset(self.name)
        return tuple(self.labels) if self.labels else spec.labels


class ModelConfig(_Strict):
    base: str = Field(
        "tiny", description="'tiny' | 'small' (built in code) | 'phantom' (shipped) | local path | hub id"
    )
    revision: str | None = None
    vlm: str = Field(
        "tiny",
        description="CLIP-family scorer: 'tiny' | 'phantom' (shipped, the dataset's modality) | path | hub id | 'open_clip:<name>'",
    )
    mllm: str | None = Field(
        None, description="VQA scorer for evaluation: None | 'tiny' | path | http(s):// OpenAI-compatible URL"
    )
    mllm_model: str | None = Field(None, description="model name to request from a remote MLLM endpoint")
    lora_rank: int = Field(4, ge=1, le=512)
    lora_alpha: float | None = Field(None, gt=0, description="default: equal to lora_rank")
    lora_targets: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    init_lora: str | None = Field(
        None,
        description="start the LoRA from a run directory (its final/), a checkpoint or a LoRA directory "
        "of the same shape: a shared warm start (e.g. a LoRA-SFT run) for CRAFT and continued SFT",
    )

    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)


class CASWeights(_Strict):
    pathology: float = Field(1.0, ge=0)
    checklist: float = Field(1.0, ge=0)
    anatomy: float = Field(1.0, ge=0)
    realism: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> CASWeights:
        if sum(self.as_dict().values()) <= 0:
            raise ValueError("at least one CAS weight must be positive")
        return self

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in CAS_DIMENSIONS}


class AugmentConfig(_Strict):
    """The reward averaged over random augmentations that keep the clinical content (no flips:
    laterality matters), so its gradient follows what survives them rather than single pixels."""

    copies: int = Field(
        0, ge=0, le=16, description="augmented copies per image; 0 = off (the image as it is)"
    )
    shift: float = Field(0.03, ge=0, le=0.25, description="max translation, share of the image side")
    rotate: float = Field(3.0, ge=0, le=30, description="max rotation in degrees")
    noise: float = Field(0.02, ge=0, le=0.5, description="std of added Gaussian pixel noise")
    blur: float = Field(0.5, ge=0, le=3, description="max Gaussian blur sigma in pixels (drawn uniformly)")


class RewardConfig(_Strict):
    model: str = Field(
        "cas",
        pattern=r"^(cas|classifier:.+)$",
        description="cas = the differentiable CAS of model.vlm; classifier:<dir | phantom-reward> = an image "
        "classifier's label likelihood (the positive control: it must move the out-of-family classifier)",
    )
    pathology: Literal["probability", "log_likelihood"] = Field(
        "probability",
        description="the reward's pathology term: probability = CAS's mean P(correct state) over the label "
        "space; log_likelihood = the mean log P(correct state) (sharper gradients near 0 and 1)",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    weights: CASWeights = Field(default_factory=CASWeights)
    use_checklists: bool = Field(True, description="ablation switch: False drops checklist and anatomy dims")
    calibration: str | None = Field(
        None,
        description="calibration JSON (craft cas calibrate): realism reference; must be made with the "
        "same dataset, VLM and labels",
    )
    checklists: list[str] = Field(
        default_factory=list,
        description="overlay checklist YAML files (e.g. MLLM-written) layered on the static base, "
        "as `craft cas --checklists`",
    )

    @property
    def classifier(self) -> str | None:
        """The classifier of `reward.model: classifier:<spec>`, else None."""
        return self.model.partition(":")[2] if self.model.startswith("classifier:") else None

    def effective_weights(self) -> dict[str, float]:
        weights = self.weights.as_dict()
        if not self.use_checklists:
            weights["checklist"] = weights["anatomy"] = 0.0
            if sum(weights.values()) <= 0:
                raise ConfigError("reward.use_checklists=false leaves no positive CAS weight")
        return weights


class PromptConfig(_Strict):
    enrichment: Literal["none", "static", "cache", "file"] = Field(
        "static",
        description="none = template only (ablation); static = knowledge-base phrases; "
        "cache = label -> phrases YAML; file = variants per label set from `craft prompts enrich`",
    )
    enrichment_cache: str | None = Field(
        None, description="YAML of MLLM-written enrichments (enrichment=cache)"
    )
    enrichment_file: str | None = Field(
        None, description="output of `craft prompts enrich` (enrichment=file)"
    )
    phrases_per_label: int = Field(1, ge=0, le=8)
    uncond_prob: float = Field(0.1, ge=0, le=1, description="prompt dropout for denoising losses (CFG)")

    @model_validator(mode="after")
    def _check(self) -> PromptConfig:
        if self.enrichment == "cache" and not self.enrichment_cache:
            raise ValueError("enrichment=cache needs enrichment_cache")
        if self.enrichment == "file" and not self.enrichment_file:
            raise ValueError("enrichment=file needs enrichment_file")
        return self


class TrainingConfig(_Strict):
    steps: int = Field(100, ge=0, description="optimiser steps in total")
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(2, ge=1, description="images per worker per micro-batch")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    sampler_steps: int = Field(20, ge=1, description="DDIM steps T")
    backprop_steps: int = Field(1, ge=1, description="last K sampler steps with gradient (DRaFT-K)")
    random_truncation: bool = Field(False, description="AlignProp-style random K in [1, backprop_steps]")
    guidance_scale: float = Field(5.0, ge=1.0)
    eta: float = Field(0.0, ge=0, le=1, description="DDIM eta for CRAFT sampling")
    denoise_weight: float = Field(
        0.0, ge=0, description="lambda: weight of the denoising loss on real images"
    )
    gradient_path: Literal["last_k", "sparse", "refl", "lv"] = Field(
        "last_k",
        description="CRAFT's sampler steps on the graph: last_k = the last K (DRaFT-K, AlignProp with "
        "random_truncation; K = T: the whole chain); sparse = sparse_steps steps over the whole trajectory "
        "with the UNet input detached (DRTune); refl = the reward on one step's predicted x0 (ReFL); "
        "lv = the last step re-noised lv_samples times (DRaFT-LV)",
    )
    sparse_steps: int = Field(3, ge=1, description="gradient_path=sparse: UNet steps with gradient")
    refl_range: tuple[int, int] | None = Field(
        None, description="gradient_path=refl: [min, max] steps before the end (default [1, T/2])"
    )
    lv_samples: int = Field(2, ge=1, description="gradient_path=lv: re-noised copies per image")
    reward_balance: Literal["raw", "ratio"] = Field(
        "raw",
        description="raw = reward_scale x reward gradient + lambda x denoising gradient; ratio = the reward "
        "gradient rescaled to reward_ratio x a running average of the (lambda-weighted) denoising gradient's norm",
    )
    reward_scale: float = Field(1.0, gt=0, description="reward_balance=raw: the reward's weight")
    reward_ratio: float = Field(
        1.0, gt=0, description="reward_balance=ratio: reward / denoising gradient norm, held every update"
    )
    balance_momentum: float = Field(
        0.9, ge=0, lt=1, description="reward_balance=ratio: momentum of the denoising norm's running average"
    )
    gradient_checkpointing: bool = True
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on GPU, fp32 on CPU; bf16 = bf16 autocast on CPU too"
    )
    weight_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="dtype the frozen weights (UNet, VAE, text encoder, reward VLM) are stored in; trainable "
        "weights and the optimiser stay fp32 (full_sft: the UNet stays fp32); bf16/fp16 autocast to it on "
        "every device, fp16 with dynamic loss scaling",
    )
    channels_last: bool = Field(False, description="UNet and VAE convolutions in NHWC memory format (GPU)")
    compile: bool = Field(
        False,
        description="torch.compile the UNet (warm-up step at start; the sampler steps without gradient in "
        "CUDA graphs on GPU); on a compiler failure: one warning, eager, metric compile_fallback = 1",
    )
    compile_backend: Literal["inductor", "aot_eager"] = Field(
        "inductor", description="aot_eager traces without generating code (what CI uses on CPU)"
    )
    compile_cudagraphs: bool = Field(
        True,
        description="with compile on CUDA: mode='reduce-overhead' (CUDA graphs) for the no-gradient calls",
    )
    checkpoint_every: int = Field(50, ge=1)
    report_every: int = Field(
        10,
        ge=1,
        description="steps per Ray Train report (each report is a barrier the controller polls every ~2 s); "
        "every step's metrics still reach metrics.jsonl",
    )
    keep_checkpoints: int = Field(3, ge=1)
    max_nonfinite_steps: int = Field(
        5, ge=1, description="stop after more than this many non-finite updates in a row"
    )
    max_error_steps: int = Field(
        20,
        ge=1,
        description="stop after more than this many updates in a row skipped for errors (e.g. an MLLM "
        "endpoint still down after its retries); counted apart from non-finite ones",
    )
    max_failures: int = Field(3, ge=0, description="worker-group restarts Ray Train may make")

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        t = self.sampler_steps
        if self.backprop_steps > t:
            raise ValueError(
                f"backprop_steps (K={self.backprop_steps}) must not exceed sampler_steps (T={t})"
            )
        if self.gradient_path == "sparse" and self.sparse_steps > t:
            raise ValueError(f"sparse_steps ({self.sparse_steps}) must not exceed sampler_steps (T={t})")
        if (
            self.refl_range is not None and not 1 <= self.refl_range[0] <= self.refl_range[1] <= t
        ):  # any path: a typo shows
            raise ValueError(f"refl_range {list(self.refl_range)} must satisfy 1 <= min <= max <= T={t}")
        if self.reward_balance == "ratio" and self.denoise_weight <= 0:
            raise ValueError(
                "reward_balance=ratio holds the reward gradient at reward_ratio x the denoising gradient: "
                "it needs denoise_weight > 0"
            )
        if self.weight_dtype != "fp32" and self.mixed_precision == "no":
            raise ValueError(
                f"weight_dtype={self.weight_dtype} needs autocast to {self.weight_dtype}: set mixed_precision "
                "to auto (or use weight_dtype fp32)"
            )
        if self.weight_dtype == "fp16" and self.mixed_precision == "bf16":
            raise ValueError("weight_dtype=fp16 autocasts to fp16: set mixed_precision to auto, not bf16")
        return self


class DDPOConfig(_Strict):
    samples_per_prompt: int = Field(4, ge=2, description="images per label set, for per-prompt advantages")
    eta: float = Field(1.0, gt=0, le=1, description="DDIM eta; must be > 0 for log-probabilities")
    clip_range: float = Field(1e-4, gt=0)
    adv_clip_max: float = Field(5.0, gt=0)
    timestep_fraction: float = Field(1.0, gt=0, le=1, description="share of sampler steps trained on")
    inner_epochs: int = Field(1, ge=1, description="passes over each sampling round's transitions")
    updates_per_epoch: int = Field(
        2, ge=1, description="optimiser updates per pass (later ones see ratios != 1)"
    )


class ScalingConfig(_Strict):
    workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per worker, e.g. {train_node: 1} keeps the workers on "
        "cluster.yaml's gpu_train nodes (CPUs and GPUs have their own fields)",
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_only(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name.upper() in ("CPU", "GPU"):
                raise ValueError(f"{name!r}: use cpus_per_worker / gpus_per_worker")
            if not amount >= 0:  # NaN too
                raise ValueError(f"{name}: {amount} must be >= 0")
        return resources

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class StorageConfig(_Strict):
    path: str = Field("runs", description="local directory or s3:// / gs:// URI for runs")
    name: str | None = Field(None, description="run name; default: the experiment name")


class DebugConfig(_Strict):
    """Fault injection for tests and drills."""

    fail_at_step: int | None = Field(None, ge=1, description="rank `fail_rank` exits once at this step")
    fail_rank: int = Field(0, ge=0)
    nonfinite_steps: list[int] = Field(
        default_factory=list, description="steps whose loss rank 0 turns into NaN"
    )
    raise_in_plan_steps: list[int] = Field(
        default_factory=list, description="steps at which rank `raise_rank` fails in plan (endpoint error)"
    )
    raise_in_loss_steps: list[int] = Field(
        default_factory=list,
        description="steps at which rank `raise_rank` fails in its first micro-batch (endpoint error)",
    )
    raise_rank: int = Field(0, ge=0)


class StageResources(_Strict):
    """One actor pool of the evaluation pipeline (Ray Data `map_batches` with a callable class)."""

    actors: int | None = Field(
        None, ge=1, description="pool size; default: one per GPU when the cluster has GPUs, else 1"
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor (also its torch threads)")
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs per actor; default: the stage's share of a GPU when the cluster has GPUs, else 0",
    )


class EvaluationConfig(_Strict):
    """`craft evaluate`: how generated images are drawn, scored and compared with real ones."""

    vlm: str | None = Field(
        None,
        description="the evaluation's CLIP-family scorer, separate from the reward's model.vlm: 'phantom-eval' "
        "(shipped, the dataset's modality) | preset | path | hub id; default: model.vlm, and every CAS it "
        "computes is then marked in-reward (the model the run optimised scores it)",
    )
    n_per_label: int = Field(
        128,
        ge=1,
        description="generated images per label: 128 resolve a 0.05 difference of per-label AUROC between runs "
        "(its standard error is ~0.07 at 24 images)",
    )
    labels: list[str] | None = Field(
        None,
        description="labels to evaluate (a subset of dataset.labels; default: all of them): fewer labels, "
        "not fewer images per label, when time is short",
    )
    split: str = Field(
        "test", min_length=1, description="real split: label distribution and downstream test set"
    )
    seed: int = Field(0, description="label-set draws and per-image seeds (same for every run compared)")
    batch_size: int = Field(8, ge=1, description="images per generation / scoring call")
    shard_size: int = Field(64, ge=1, description="images per result shard (the unit of resuming)")
    weights: CASWeights = Field(
        default_factory=CASWeights,
        description="CAS weights of the evaluation (fixed across methods, unlike reward.weights)",
    )
    calibration: str | None = Field(
        None,
        description="calibration JSON for thresholds and realism reference; default: reward.calibration when "
        "it was made with the evaluation's evaluator, else one is made on dataset.val_split and cached",
    )
    classifier: str | None = Field(
        None,
        description="out-of-family classifier: a directory saved by craft_ray.models.classifier | 'phantom'; "
        "default: one trained on the real train split, cached under the eval directory",
    )
    classifier_epochs: int = Field(
        20, ge=1, description="epochs of the out-of-family and downstream classifiers"
    )
    sampler_steps: int | None = Field(None, ge=1, description="default: training.sampler_steps")
    weight_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="dtype of the generation pipeline (weights, the run's LoRA, sampling); keep it the same for "
        "every run compared (scoring and the classifier stay fp32)",
    )
    guidance_scale: float | None = Field(None, ge=1.0, description="default: training.guidance_scale")
    eta: float | None = Field(None, ge=0, le=1, description="DDIM eta; default: training.eta")
    copy_threshold: float | Literal["auto"] = Field(
        "auto",
        description="memorisation: similarity to the nearest real training image at which an image is a copy; "
        "auto = the copy_quantile of held-out real (dataset.val_split) images' similarity, so new images of "
        "the real distribution are flagged as often as held-out ones",
    )
    copy_quantile: float = Field(
        0.95, gt=0, lt=1, description="memorisation: the held-out quantile copy_threshold auto calibrates to"
    )
    memorisation_embedding: Literal["vlm", "pixels"] = Field(
        "pixels",
        description="pixels = centred 16x16 thumbnails (model-free: near-pixel copies); vlm = the evaluator's "
        "image embedding (use with a real VLM; the random tiny preset's embedding means nothing)",
    )
    top_pairs: int = Field(8, ge=1, le=64, description="memorisation pairs shown in the grid")
    n_boot: int = Field(1000, ge=100, description="bootstrap resamples for confidence intervals")
    ci_level: float = Field(0.95, gt=0, lt=1)
    generate: StageResources = Field(default_factory=StageResources)
    score: StageResources = Field(default_factory=StageResources)
    classify: StageResources = Field(default_factory=StageResources)

    @field_validator("copy_threshold", mode="before")
    @classmethod
    def _auto_or_similarity(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError(f"must be 'auto' or a similarity in (0, 1], got {value!r}")
        return float(value)

    @model_validator(mode="after")
    def _check(self) -> EvaluationConfig:
        if self.labels is not None and not self.labels:
            raise ValueError("labels must not be empty (omit the key to evaluate every label)")
        if self.shard_size % self.batch_size:
            raise ValueError(
                f"shard_size ({self.shard_size}) must be a multiple of batch_size ({self.batch_size})"
            )
        return self


def _phantom_of_modality(value: Any, modality: str, field: str, dataset: str) -> Any:
    """'phantom' -> 'phantom:<modality>' (likewise 'phantom-eval'); a shipped name of another
    modality is an error."""
    family = family_of(value) if isinstance(value, str) else None
    if family is None:
        return value
    if value == family:
        return f"{family}:{modality}"
    if value != f"{family}:{modality}":
        named = value.removeprefix(f"{family}:")
        what = "another modality" if named in MODALITIES else f"no modality (known: {', '.join(MODALITIES)})"
        raise ValueError(
            f"{field} {value!r} names {what}; dataset {dataset} is of modality {modality!r} "
            f"(use '{family}' or '{family}:{modality}')"
        )
    return value


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    method: Literal["craft", "lora_sft", "full_sft", "ddpo", "pretrained"]
    dataset: DatasetConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    ddpo: DDPOConfig = Field(default_factory=DDPOConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="before")
    @classmethod
    def _phantom_vlm(cls, data: Any) -> Any:
        """`model.vlm: phantom` and `evaluation.classifier: phantom` name the shipped models of the
        dataset's modality: `phantom:<modality>`."""
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if not (isinstance(dataset, dict) and dataset.get("name") in DATASETS):
            return data
        modality = DATASETS[dataset["name"]].modality
        for section, key in (("model", "vlm"), ("evaluation", "vlm"), ("evaluation", "classifier")):
            part = data.get(section)
            if isinstance(part, dict) and key in part:
                value = _phantom_of_modality(part[key], modality, f"{section}.{key}", dataset["name"])
                data = {**data, section: {**part, key: value}}
        reward = data.get("reward")
        if isinstance(reward, dict) and isinstance(reward.get("model"), str):
            kind, _, name = reward["model"].partition(":")
            if kind == "classifier" and name:
                name = _phantom_of_modality(name, modality, "reward.model", dataset["name"])
                data = {**data, "reward": {**reward, "model": f"classifier:{name}"}}
        return data

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        trained_steps = (
            max(1, round(self.training.sampler_steps * self.ddpo.timestep_fraction))
            * self.training.grad_accum
        )
        if self.method == "ddpo" and self.ddpo.updates_per_epoch > trained_steps:
            raise ValueError(
                f"ddpo.updates_per_epoch={self.ddpo.updates_per_epoch} exceeds the {trained_steps} sampler transitions "
                "trained per step (training.sampler_steps x ddpo.timestep_fraction x training.grad_accum)"
            )
        if self.debug.fail_at_step is not None and self.debug.fail_rank >= self.scaling.workers:
            raise ValueError(
                f"debug.fail_rank={self.debug.fail_rank} but scaling.workers={self.scaling.workers}"
            )
        unknown = [x for x in self.evaluation.labels or [] if x not in self.dataset.label_space]
        if unknown:
            raise ValueError(
                f"evaluation.labels {unknown} are not in dataset.labels {list(self.dataset.label_space)}"
            )
        if self.reward.model != "cas" and self.method != "craft":
            raise ValueError(
                f"reward.model={self.reward.model!r} is a differentiable reward for method craft, "
                f"not {self.method!r} (leave reward.model: cas)"
            )
        if self.reward.classifier is not None and self.reward.classifier == self.evaluation.classifier:
            raise ValueError(
                f"reward.model and evaluation.classifier are the same classifier ({self.evaluation.classifier}): "
                "the out-of-family evaluator must not be the reward"
            )
        raises = self.debug.raise_in_plan_steps or self.debug.raise_in_loss_steps
        if raises and self.debug.raise_rank >= self.scaling.workers:
            raise ValueError(
                f"debug.raise_rank={self.debug.raise_rank} but scaling.workers={self.scaling.workers}"
            )
        return self

    @property
    def run_name(self) -> str:
        return self.storage.name or self.name

    def storage_uri(self) -> str:
        """Absolute storage path (Ray needs one); URIs with a scheme are kept as they are."""
        if "://" in self.storage.path:
            return self.storage.path
        return str(Path(self.storage.path).expanduser().resolve())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def resolved(self) -> ExperimentConfig:
        """A copy with local paths made absolute: Ray workers run in other working directories."""

        def absolute(path: str | None) -> str | None:
            return path if path is None or "://" in path else str(Path(path).expanduser().resolve())

        def local_model(spec: str | None) -> str | None:
            shipped = family_of(spec) is not None
            return (
                absolute(spec) if spec is not None and not shipped and Path(spec).exists() else spec
            )  # presets, shipped phantom models and hub ids stay

        data = self.model_dump()
        for key in ("base", "vlm", "mllm"):
            data["model"][key] = local_model(data["model"][key])
        data["dataset"]["uri"] = absolute(self.dataset.uri)
        data["model"]["init_lora"] = absolute(self.model.init_lora)
        data["prompts"]["enrichment_cache"] = absolute(self.prompts.enrichment_cache)
        data["prompts"]["enrichment_file"] = absolute(self.prompts.enrichment_file)
        data["reward"]["calibration"] = absolute(self.reward.calibration)
        data["evaluation"]["calibration"] = absolute(self.evaluation.calibration)
        data["evaluation"]["classifier"] = local_model(self.evaluation.classifier)
        data["evaluation"]["vlm"] = local_model(self.evaluation.vlm)
        if self.reward.classifier is not None:
            data["reward"]["model"] = f"classifier:{local_model(self.reward.classifier)}"
        data["reward"]["checklists"] = [absolute(path) for path in self.reward.checklists]
        data["storage"]["path"] = self.storage_uri()
        return ExperimentConfig.model_validate(data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml_mapping(path: str | Path, what: str = "YAML file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty mapping); a missing
    file, a parse error or another top-level type is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:  # the parser's multi-line message, on one line
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _read_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle through {' -> '.join(str(p) for p in seen)}")
    if not path.is_file():
        where = f" (extended from {seen[-1]})" if seen else ""
        raise ConfigError(f"{path}: config file not found{where}")
    data = read_yaml_mapping(path, "config file")
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: 'extends' must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = _deep_merge(merged, _read_yaml_tree(path.parent / parent, (*seen, path)))
    return _deep_merge(merged, data)


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "literal_error" and loc == "dataset.name":
            msg = f"unknown dataset {err.get('input')!r} (known: {', '.join(DATASETS)})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(
            f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"
        )  # a check across fields names them
    return "\n".join(lines)


def validate_config(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load an experiment YAML (following `extends:`), apply dotted-key overrides, validate."""
    data = _read_yaml_tree(Path(path))
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(data, source=str(path))
