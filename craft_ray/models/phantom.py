"""The shipped phantom models, by name: `phantom:<modality>` (the reward VLM of a modality, and as
`evaluation.classifier` the out-of-family CNN of that modality), `phantom-eval:<modality>` (the
evaluation VLM of a modality: another architecture, other training data, never the reward's
weights) and `phantom` (the diffusion base of all four modalities).

They live in the package (`craft_ray/assets/phantom/`), each with its model card, and are made by
`craft pretrain vlm|classifier|diffusion` (the exact command is in each card). A bare `phantom` or
`phantom-eval` name is resolved to the dataset's modality where the dataset is known
(ExperimentConfig, EvaluatorSpec).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from craft_ray.errors import ModelError
from craft_ray.knowledge.labels import DATASETS, MODALITIES
from craft_ray.model_names import PHANTOM, PHANTOM_EVAL, PHANTOM_REWARD, family_of, with_modality

PREFIX = "phantom:"
# name family -> the asset directory prefix of its VLMs (`<dir>-<modality>`)
VLM_FAMILIES = {PHANTOM: "vlm", PHANTOM_EVAL: "vlm-eval"}

# name family -> the asset directory prefix of its classifiers
CLASSIFIER_FAMILIES = {PHANTOM: "classifier", PHANTOM_REWARD: "classifier-reward"}

# asset directory prefix -> the `craft pretrain` sub-command (and the option) that trains it
PRETRAIN_COMMANDS = {
    "vlm": "vlm",
    "vlm-eval": "vlm --arch eval",
    "classifier": "classifier",
    "classifier-reward": "classifier --data-seed 500",
}
# modality -> the `--arch` of its evaluation VLM where the default `eval` failed the gate (README:
# 'The shipped phantom models': on dermoscopy an 8 x 8 patch grid missed the second, smaller lesion)
EVAL_ARCHS = {"derm": "eval-fine80"}


def pretrain_command(kind: str, modality: str) -> str:
    """The `craft pretrain` sub-command and options that make the asset `<kind>-<modality>`."""
    if kind == "vlm-eval" and modality in EVAL_ARCHS:
        return f"vlm --arch {EVAL_ARCHS[modality]}"
    return PRETRAIN_COMMANDS[kind]


# asset directory prefix -> the config key that names such a model
CONFIG_KEYS = {
    "vlm": "model.vlm",
    "vlm-eval": "evaluation.vlm",
    "classifier": "evaluation.classifier",
    "classifier-reward": "reward.classifier",
}
# the VLM recipe that made the shipped VLMs of the modalities after chest pass their gates (README:
# 'The shipped phantom models'); the defaults (3000 steps, 20 % implausible) are a quick try
VLM_RECIPE = "--steps 9000 --n-train 20000 --implausible 0.4 --gate-n 400"

__all__ = ["PHANTOM", "PHANTOM_EVAL", "PHANTOM_REWARD", "family_of", "is_phantom", "with_modality"]


def assets_root() -> Path:
    return Path(str(resources.files("craft_ray"))) / "assets" / "phantom"


def is_phantom(spec: str | None) -> bool:
    return family_of(spec) is not None


def phantom_vlm_name(modality: str, family: str = PHANTOM) -> str:
    return f"{family}:{modality}"


def shipped_vlms(family: str = PHANTOM) -> list[str]:
    if family not in VLM_FAMILIES:
        return []
    kind = VLM_FAMILIES[family]
    return [m for m in MODALITIES if (assets_root() / f"{kind}-{m}" / "model.safetensors").is_file()]


def shipped_classifiers(family: str = PHANTOM) -> list[str]:
    kind = CLASSIFIER_FAMILIES[family]
    return [m for m in MODALITIES if (assets_root() / f"{kind}-{m}" / "model.safetensors").is_file()]


def _modality_dir(
    spec: str, kind: str, what: str, shipped: list[str], family: str, config_key: str | None
) -> Path:
    """assets/<kind>-<modality> of `<family>:<modality>`; a clear ModelError for a bare name, an
    unknown modality or weights that were never shipped (naming `config_key`, the key that named
    it, else the key that usually names such a model)."""
    if spec == family:
        raise ModelError(
            f"{what} {family!r} needs a modality: name it {family}:<modality> "
            f"({', '.join(MODALITIES)}), or use it in a config or command that names the dataset"
        )
    modality = spec.removeprefix(f"{family}:")
    if modality not in MODALITIES:
        hint = (
            f"; {modality} is a dataset: {family}:{DATASETS[modality].modality}"
            if modality in DATASETS
            else ""
        )
        raise ModelError(
            f"unknown phantom {what} {spec!r}: modality {modality!r} (known: {', '.join(MODALITIES)}){hint}"
        )
    directory = assets_root() / f"{kind}-{modality}"
    if not (directory / "model.safetensors").is_file():
        names = ", ".join(phantom_vlm_name(m, family) for m in shipped) or "none"
        recipe = f" {VLM_RECIPE}" if kind in VLM_FAMILIES.values() else ""
        key = config_key or CONFIG_KEYS[kind]
        raise ModelError(
            f"no shipped {what} weights for {spec!r} (shipped: {names}); train them with "
            f"`craft pretrain {pretrain_command(kind, modality)} --modality {modality}{recipe} --out DIR` (README: "
            f"'The shipped phantom models') and name DIR in its place (`{key}: DIR`; "
            f"in the demo `--set {key}=DIR`), "
            f"or write DIR as {directory} to ship it"
        )
    return directory


def phantom_vlm_dir(spec: str, config_key: str | None = None) -> Path:
    """The directory of the VLM `phantom:<modality>` (reward) or `phantom-eval:<modality>`;
    `config_key`: the config key that named it, for the error when its weights are not shipped."""
    family = family_of(spec) or PHANTOM
    if family not in VLM_FAMILIES:
        raise ModelError(f"{spec!r} names a classifier, not a VLM (VLMs: phantom, phantom-eval)")
    what = "evaluation VLM" if family == PHANTOM_EVAL else "VLM"
    return _modality_dir(spec, VLM_FAMILIES[family], what, shipped_vlms(family), family, config_key)


def phantom_classifier_dir(spec: str, config_key: str | None = None) -> Path:
    """The directory of the out-of-family classifier `phantom:<modality>`, or of the reward
    classifier `phantom-reward:<modality>` (the positive control's reward); `config_key` as for
    `phantom_vlm_dir`."""
    family = family_of(spec)
    if family not in CLASSIFIER_FAMILIES:
        raise ModelError(
            f"unknown phantom classifier {spec!r}: name it phantom:<modality> (out-of-family) "
            "or phantom-reward:<modality> (a reward)"
        )
    what = "reward classifier" if family == PHANTOM_REWARD else "classifier"
    return _modality_dir(
        spec, CLASSIFIER_FAMILIES[family], what, shipped_classifiers(family), family, config_key
    )


def phantom_diffusion_dir(spec: str) -> Path:
    """`phantom` (or `phantom:<modality>`: the same base serves every modality)."""
    modality = spec.removeprefix(PREFIX) if spec != PHANTOM else None
    if family_of(spec) != PHANTOM or (modality is not None and modality not in MODALITIES):
        raise ModelError(
            f"unknown phantom base {spec!r}: modality {modality!r} (known: {', '.join(MODALITIES)})"
        )
    directory = assets_root() / "diffusion"
    if not (directory / "model_index.json").is_file():
        raise ModelError(
            f"no shipped phantom diffusion base in {directory}; train it with "
            "`craft pretrain diffusion --out DIR` and name DIR as model.base"
        )
    return directory


def diffusion_shipped() -> bool:
    return (assets_root() / "diffusion" / "model_index.json").is_file()
