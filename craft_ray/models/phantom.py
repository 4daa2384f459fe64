"""The shipped phantom models, by name: `phantom:<modality>` (the reward VLM of a modality, and as
`evaluation.classifier` the out-of-family CNN of that modality) and `phantom` (the diffusion base of
all four modalities).

They live in the package (`craft_ray/assets/phantom/`), each with its model card, and are made by
`craft pretrain vlm|diffusion` (the exact command is in each card). A bare `phantom` VLM or classifier name
is resolved to the dataset's modality where the dataset is known (ExperimentConfig, EvaluatorSpec).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from craft_ray.errors import ModelError
from craft_ray.knowledge.labels import MODALITIES

PHANTOM = "phantom"
PREFIX = "phantom:"


def assets_root() -> Path:
    return Path(str(resources.files("craft_ray"))) / "assets" / "phantom"


def is_phantom(spec: str | None) -> bool:
    return spec == PHANTOM or (spec or "").startswith(PREFIX)


def phantom_vlm_name(modality: str) -> str:
    return f"{PREFIX}{modality}"


def shipped_vlms() -> list[str]:
    return [m for m in MODALITIES if (assets_root() / f"vlm-{m}" / "model.safetensors").is_file()]


def shipped_classifiers() -> list[str]:
    return [m for m in MODALITIES if (assets_root() / f"classifier-{m}" / "model.safetensors").is_file()]


def _modality_dir(spec: str, kind: str, what: str, shipped: list[str]) -> Path:
    """assets/<kind>-<modality> of `phantom:<modality>`; a clear ModelError for a bare name, an
    unknown modality or weights that were never shipped."""
    if spec == PHANTOM:
        raise ModelError(
            f"{what} 'phantom' needs a modality: name it phantom:<modality> "
            f"({', '.join(MODALITIES)}), or use it in a config or command that names the dataset"
        )
    modality = spec.removeprefix(PREFIX)
    if modality not in MODALITIES:
        raise ModelError(
            f"unknown phantom {what} {spec!r}: modality {modality!r} (known: {', '.join(MODALITIES)})"
        )
    directory = assets_root() / f"{kind}-{modality}"
    if not (directory / "model.safetensors").is_file():
        names = ", ".join(phantom_vlm_name(m) for m in shipped) or "none"
        raise ModelError(
            f"no shipped {what} weights for {spec!r} (shipped: {names}); train them with "
            f"`craft pretrain {kind} --modality {modality} --out DIR` and name DIR instead"
        )
    return directory


def phantom_vlm_dir(spec: str) -> Path:
    """The directory of the reward VLM `phantom:<modality>`."""
    return _modality_dir(spec, "vlm", "VLM", shipped_vlms())


def phantom_classifier_dir(spec: str) -> Path:
    """The directory of the out-of-family classifier `phantom:<modality>`."""
    return _modality_dir(spec, "classifier", "classifier", shipped_classifiers())


def phantom_diffusion_dir(spec: str) -> Path:
    """`phantom` (or `phantom:<modality>`: the same base serves every modality)."""
    modality = spec.removeprefix(PREFIX) if spec != PHANTOM else None
    if modality is not None and modality not in MODALITIES:
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
