"""Is a reported number computed by the model the run optimised? Then it is marked *in-reward*.

A reward that is hacked scores itself well, so a CAS computed by the run's own reward model says
little about clinical alignment: the tables and `metrics.json` say so wherever it happens (the
README's measurement principles). A run's reward models are those its method optimises: the
reward VLM (`model.vlm`) for CRAFT and DDPO, the MLLM too for DDPO's evaluation-path reward when
`model.mllm` is set, and a classifier for a classifier reward (`reward.model`); methods that train
on the denoising loss alone (lora_sft, full_sft) or not at all (pretrained) have none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft_ray.cas.score import EvaluatorSpec
from craft_ray.config import ExperimentConfig
from craft_ray.knowledge.labels import get_dataset
from craft_ray.model_names import with_modality


def _same_model(a: str | None, b: str | None) -> bool:
    """Model specs name the same model (local paths by their resolved location)."""
    if a is None or b is None:
        return False

    def key(spec: str) -> str:
        path = Path(spec).expanduser()
        return str(path.resolve()) if path.exists() else spec

    return key(a) == key(b)


def reward_models(cfg: ExperimentConfig) -> dict[str, str]:
    """The models a run's training reward is computed by: {'vlm': ..., 'mllm': ..., 'classifier': ...}."""
    from craft_ray.train.methods import get_method

    method = get_method(cfg.method)
    if not method.uses_reward:
        return {}
    modality = get_dataset(cfg.dataset.name).modality
    models = {"vlm": with_modality(cfg.model.vlm, modality)}
    if method.reward_with_mllm and cfg.model.mllm:
        models["mllm"] = cfg.model.mllm
    return models


def in_reward(run_cfg: ExperimentConfig, evaluator: EvaluatorSpec) -> dict[str, Any]:
    """Whether the evaluation CAS (computed by `evaluator`) shares a model with the run's reward."""
    reward = reward_models(run_cfg)
    shared = [
        name
        for kind, name in reward.items()
        if _same_model(name, {"vlm": evaluator.vlm, "mllm": evaluator.mllm}.get(kind))
    ]
    note = (
        f"CAS is in-reward: computed by {', '.join(shared)}, which {run_cfg.run_name} was trained to maximise"
        if shared
        else "CAS is computed by models the run did not optimise"
    )
    return {"cas": bool(shared), "models": shared, "reward_models": reward, "note": note}
