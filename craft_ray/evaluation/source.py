"""Which model an evaluation generates with: a training run's checkpoint, or a config's base model.

A run directory is what `craft train` leaves: `final/` (and `checkpoint_NNNNNN/`) holding
`model.json`, `config.yaml` and the trained weights (`lora/` in diffusers format, or `unet/` for
full_sft). `--method pretrained --config F` evaluates the base model of an experiment config.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from craft_ray.config import ExperimentConfig, load_config, validate_config
from craft_ray.errors import EvaluationError
from craft_ray.models.lora import LORA_WEIGHTS_NAME

FINAL = "final"
WEIGHT_FILES = {"lora": f"lora/{LORA_WEIGHTS_NAME}", "unet": "unet/diffusion_pytorch_model.safetensors"}


@dataclass
class ModelSource:
    cfg: ExperimentConfig
    name: str  # "<run name>@final", "<run name>@step 50", "pretrained:<base>"
    method: str
    adapter: str | None  # "lora" | "unet" | None (the base model as it is)
    weights: str | None  # directory with the adapter weights
    step: int | None
    run_dir: str | None

    def weights_digest(self) -> str | None:
        """sha256 of the trained weights: an evaluation is tied to the exact weights it saw."""
        if self.adapter is None or self.weights is None:
            return None
        path = Path(self.weights).parent / WEIGHT_FILES[self.adapter]
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["cfg"] = self.cfg.model_dump(mode="json")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        return cls(**{**data, "cfg": ExperimentConfig.model_validate(data["cfg"])})


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir())


def open_run(run_dir: str | Path, checkpoint: int | None = None) -> ModelSource:
    """The model of a run's `final/` (or `checkpoint_NNNNNN/` with `checkpoint=N`)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise EvaluationError(f"{run}: no such run directory")
    name = FINAL if checkpoint is None else f"checkpoint_{checkpoint:06d}"
    where = run / name
    available = _checkpoints(run)
    if not where.is_dir():
        if checkpoint is None:
            raise EvaluationError(
                f"{run}: no final/ checkpoint (the run has not finished; continue it with `craft train --resume`"
                f"{', or pass --checkpoint N for one of ' + ', '.join(available) if available else ''})"
            )
        raise EvaluationError(f"{run}: no {name} (available: {', '.join(available) or 'none'})")
    card_path, config_path = where / "model.json", where / "config.yaml"
    if not card_path.is_file() or not config_path.is_file():
        raise EvaluationError(f"{where}: incomplete checkpoint (needs model.json and config.yaml)")
    try:
        card = json.loads(card_path.read_text())
        raw = yaml.safe_load(config_path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise EvaluationError(f"{where}: unreadable checkpoint files ({exc})") from None
    cfg = validate_config(raw, source=str(config_path))
    adapter = card.get("adapter")
    if adapter is not None:
        if adapter not in WEIGHT_FILES or not (where / WEIGHT_FILES[adapter]).is_file():
            raise EvaluationError(
                f"{where}: model.json names adapter {adapter!r} but its weights are missing"
            )
    label = "final" if checkpoint is None else f"step {card.get('step', checkpoint)}"
    return ModelSource(
        cfg=cfg,
        name=f"{cfg.run_name}@{label}",
        method=str(card.get("method", cfg.method)),
        adapter=adapter,
        weights=str((where / card["adapter_path"]).resolve()) if adapter else None,
        step=card.get("step"),
        run_dir=str(run.resolve()),
    )


def pretrained_source(config_path: str | Path, overrides: dict[str, Any] | None = None) -> ModelSource:
    """The base model of an experiment config, untrained (`--method pretrained --config F`)."""
    cfg = load_config(config_path, overrides).resolved()
    return ModelSource(
        cfg=cfg,
        name=f"pretrained:{cfg.model.base}",
        method="pretrained",
        adapter=None,
        weights=None,
        step=None,
        run_dir=None,
    )
