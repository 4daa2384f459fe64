"""The names of the shipped phantom models, as configs and commands write them (no model code
here: `craft_ray.config` resolves these names, `craft_ray.models.phantom` finds their weights).

- `phantom` / `phantom:<modality>`: the reward VLM of a modality; as `evaluation.classifier` the
  out-of-family CNN; as `model.base` the diffusion base of all modalities;
- `phantom-eval` / `phantom-eval:<modality>`: the evaluation VLM of a modality (another
  architecture and other training data than the reward VLM);
- `phantom-reward` / `phantom-reward:<modality>`: a classifier to use as a training reward
  (`reward.model: classifier:phantom-reward`, the positive control), trained on data the
  out-of-family classifier never saw.
"""

from __future__ import annotations

from pathlib import Path

PHANTOM = "phantom"
PHANTOM_EVAL = "phantom-eval"
PHANTOM_REWARD = "phantom-reward"
FAMILIES = (PHANTOM, PHANTOM_EVAL, PHANTOM_REWARD)


def family_of(spec: str | None) -> str | None:
    """'phantom' / 'phantom-eval' for a shipped-model name (bare or with a modality), else None."""
    if not isinstance(spec, str) or not spec:
        return None
    family = spec.split(":", 1)[0]
    return family if family in FAMILIES else None


def with_modality(spec: str, modality: str) -> str:
    """A bare family name -> '<family>:<modality>'; anything else unchanged."""
    return f"{spec}:{modality}" if spec in FAMILIES else spec


def missing_local_path(spec: str | None) -> bool:
    """A model named by a local path ('/...', './...', '../...', '~/...') that does not exist: worth
    a plain 'no such directory' before any hub lookup reads it as a malformed repo id."""
    if not isinstance(spec, str) or not spec.startswith(("/", "./", "../", "~")):
        return False
    return not Path(spec).expanduser().exists()
