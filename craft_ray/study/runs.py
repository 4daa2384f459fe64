"""The training runs a study compares: each run's `final/` model (README "What a run leaves")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from craft_ray.config import ExperimentConfig, validate_config
from craft_ray.errors import CraftError, StudyError

FINAL = "final"
WEIGHTS = {
    "lora": "lora/pytorch_lora_weights.safetensors",
    "unet": "unet/diffusion_pytorch_model.safetensors",
}


@dataclass(frozen=True)
class StudyRun:
    directory: Path  # the run directory (absolute)
    cfg: ExperimentConfig  # final/config.yaml
    card: dict[str, Any]  # final/model.json

    @property
    def final(self) -> Path:
        return self.directory / FINAL

    @property
    def name(self) -> str:
        return self.cfg.run_name

    @property
    def method(self) -> str:
        return str(self.card.get("method", self.cfg.method))

    @property
    def adapter(self) -> str | None:
        return self.card.get("adapter")


def open_run(run_dir: str | Path) -> StudyRun:
    """A run's final model, checked: config, model card and the weights the card names."""
    directory = Path(run_dir).expanduser().resolve()
    final = directory / FINAL
    if not directory.is_dir():
        raise StudyError(f"{run_dir}: no such run directory")
    if not (final / "model.json").is_file() or not (final / "config.yaml").is_file():
        raise StudyError(
            f"{run_dir}: no final/model.json and final/config.yaml (has the run finished? `craft train` writes them)"
        )
    try:
        card = json.loads((final / "model.json").read_text())
        cfg = validate_config(
            yaml.safe_load((final / "config.yaml").read_text()), source=str(final / "config.yaml")
        )
    except (ValueError, yaml.YAMLError) as exc:
        raise StudyError(f"{final}: unreadable model card or config ({exc})") from None
    except CraftError as exc:
        raise StudyError(str(exc)) from None
    adapter = card.get("adapter")
    if adapter is not None and (adapter not in WEIGHTS or not (final / WEIGHTS[adapter]).is_file()):
        raise StudyError(f"{final}: model.json names adapter {adapter!r} but its weights are missing")
    return StudyRun(directory, cfg, card)


def check_same_dataset(runs: list[StudyRun]) -> tuple[str, list[str]]:
    """The runs' common dataset and the labels every run was trained on (in the first run's order)."""
    datasets = {run.cfg.dataset.name for run in runs}
    if len(datasets) > 1:
        named = ", ".join(f"{run.directory.name}: {run.cfg.dataset.name}" for run in runs)
        raise StudyError(
            f"the runs were trained on different datasets ({named}); a study compares one dataset"
        )
    common = [
        label
        for label in runs[0].cfg.dataset.label_space
        if all(label in r.cfg.dataset.label_space for r in runs)
    ]
    if not common:
        raise StudyError("the runs share no label: nothing to condition both images of a pair on")
    return datasets.pop(), common
