"""The demo's experiments: the YAMLs of `experiments/demo/` (one per method), placed in a demo
directory.

Every `*.yaml` of the directory whose name does not start with `_` is one method to train and
evaluate (`_common.yaml` holds what they share). The demo owns the paths, so it overrides them:
the dataset under `<out>/data/<dataset>`, the calibrations `<out>/cas/<dataset>-reward.json` (the
reward VLM's realism reference) and `<out>/cas/<dataset>-evaluation.json` (the evaluation's thresholds), the runs under `<out>/seed-<s>/runs`, and the seed of training and of evaluation
sampling. Anything else (steps, learning rate, reward weights, K, lambda, guidance, evaluation
sizes) is read from the YAMLs, so a user changes the experiment there, or per run with `--set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from craft_ray.config import ExperimentConfig, load_config
from craft_ray.errors import ConfigError

DEMO_EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "demo"
MAIN_METHOD = "craft"


@dataclass(frozen=True)
class DemoLayout:
    """Where one demo directory keeps what it makes."""

    out: Path

    def data(self, dataset: str) -> Path:
        return self.out / "data" / dataset

    def calibration(self, dataset: str, role: str = "evaluation") -> Path:
        """The real-image calibration of the reward's evaluator (its realism reference) or of the
        evaluation's (thresholds): separate models, separate files."""
        return self.out / "cas" / f"{dataset}-{role}.json"

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed-{seed}"

    def runs(self, seed: int) -> Path:
        return self.seed_dir(seed) / "runs"

    def report(self, seed: int) -> Path:
        return self.seed_dir(seed) / "report"

    def summary(self, seed: int) -> Path:
        return self.seed_dir(seed) / "summary.json"


WARM_PREFIX = "@"  # model.init_lora: "@<run name>" = another demo experiment's run of the same seed


@dataclass
class DemoExperiment:
    path: Path
    cfg: ExperimentConfig
    warm_start_of: list[str] = field(default_factory=list)  # run names that start from this run

    @property
    def method(self) -> str:
        return self.cfg.method

    @property
    def evaluated(self) -> bool:
        """A warm start is trained (first) and not evaluated: the comparison is between the runs
        that continue from it."""
        return not self.warm_start_of


def experiment_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such experiments directory")
    files = sorted(p for p in directory.glob("*.yaml") if not p.name.startswith("_"))
    if not files:
        raise ConfigError(f"{directory}: no experiment YAMLs (files not starting with '_')")
    return files


def load_experiments(
    directory: Path, layout: DemoLayout, seed: int, overrides: dict[str, Any] | None = None
) -> list[DemoExperiment]:
    """The demo's experiments for one seed, the main method (craft) first."""
    experiments = []
    for path in experiment_files(directory):
        raw = load_config(path, overrides)
        dataset = raw.dataset.name
        warm = raw.model.init_lora or ""
        placed = {
            **(overrides or {}),
            "dataset.uri": str(layout.data(dataset)),
            "storage.path": str(layout.runs(seed)),
            "seed": seed,
            "evaluation.seed": seed,
            "reward.calibration": str(layout.calibration(dataset, "reward")),
            "evaluation.calibration": str(layout.calibration(dataset, "evaluation")),
        }
        if warm.startswith(WARM_PREFIX):
            placed["model.init_lora"] = str(layout.runs(seed) / warm[len(WARM_PREFIX) :])
        experiments.append(DemoExperiment(path, load_config(path, placed)))
    link_warm_starts(directory, experiments)
    check_experiments(directory, [e for e in experiments if e.evaluated])
    # warm starts first (others start from them), then the main method, then the baselines
    return sorted(experiments, key=lambda e: (e.evaluated, e.method != MAIN_METHOD))


def link_warm_starts(directory: Path, experiments: list[DemoExperiment]) -> None:
    """`model.init_lora: "@<run name>"` names another experiment of the directory: that one becomes a
    warm start (trained first, not evaluated)."""
    by_run = {e.cfg.run_name: e for e in experiments}
    for exp in experiments:
        source = exp.cfg.model.init_lora
        if source is None or Path(source).parent != Path(exp.cfg.storage.path):
            continue  # no warm start, or one outside the demo
        name = Path(source).name
        if name not in by_run or name == exp.cfg.run_name:
            raise ConfigError(
                f"{exp.path}: model.init_lora '@{name}' names no other experiment of {directory} "
                f"(run names: {', '.join(sorted(by_run))})"
            )
        if by_run[name].cfg.model.init_lora:
            raise ConfigError(
                f"{exp.path}: its warm start '@{name}' has a warm start itself (one level only)"
            )
        by_run[name].warm_start_of.append(exp.cfg.run_name)


def check_experiments(directory: Path, experiments: list[DemoExperiment]) -> None:
    datasets = {e.cfg.dataset.name for e in experiments}
    if len(datasets) != 1:
        raise ConfigError(
            f"{directory}: the demo's experiments must share one dataset, found {sorted(datasets)}"
        )
    names = [e.cfg.run_name for e in experiments]
    if len(set(names)) != len(names):
        raise ConfigError(f"{directory}: two experiments share a run name: {names}")
    if sum(e.method == MAIN_METHOD for e in experiments) != 1:
        raise ConfigError(
            f"{directory}: the demo needs exactly one '{MAIN_METHOD}' experiment (the method compared)"
        )
