"""The typed sweep spec (`experiments/sweeps/<name>.yaml`), loaded from YAML with errors naming the
file and the field.

A sweep crosses datasets x methods (each an experiment YAML found by the `experiments` template) x
a search space over dotted experiment-config keys. `grid` values are crossed; `choice`, `uniform`
and `loguniform` values are drawn `search.num_samples` times per grid point (Tune's semantics,
drawn up front from `search.seed`, so the trial list is known and validated before anything runs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from craft_ray.config import read_yaml_mapping
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import DATASETS

Scalar = float | int | str | bool
METRICS = {"val_cas": "max", "val_tail": "min"}  # metric -> the mode that makes it better
PLACEHOLDER = ("<", ">")  # a string value "<...>" is a placeholder the user must replace


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One key of the search space: exactly one of the four."""

    grid: list[Scalar] | None = Field(None, description="values crossed with the other grid keys")
    choice: list[Scalar] | None = Field(None, description="values drawn uniformly at random")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], drawn uniformly")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], drawn log-uniformly")

    @model_validator(mode="before")
    @classmethod
    def _bare_list_is_grid(cls, data: Any) -> Any:
        return {"grid": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of grid, choice, uniform, loguniform (got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        if kind in ("grid", "choice") and not getattr(self, kind):
            raise ValueError(f"{kind}: needs at least one value")
        if kind in ("uniform", "loguniform"):
            low, high = getattr(self, kind)
            if not low < high:
                raise ValueError(f"{kind}: low must be below high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: low must be > 0, got {low}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def extremes(self) -> list[Scalar]:
        """The values that bound what this key can take: every grid/choice value, or the interval ends."""
        return list(getattr(self, self.kind))

    def sample(self, rng) -> Scalar:
        """One draw (`rng`: numpy Generator); grid keys are not sampled."""
        if self.kind == "choice":
            return self.choice[int(rng.integers(len(self.choice)))]
        if self.kind == "uniform":
            return float(rng.uniform(*self.uniform))
        if self.kind == "loguniform":
            low, high = self.loguniform
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        raise ValueError("grid values are crossed, not sampled")


class MethodEntry(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="experiment name: craft, lora_sft, ..."
    )
    keep: list[str] = Field(
        default_factory=list,
        description="config keys (or prefixes such as reward.weights) this method keeps as its experiment "
        "sets them instead of sweeping them (e.g. training.denoise_weight for craft_no_lambda)",
    )

    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted config keys set for this method only (after the spec's)"
    )

    def keeps(self, key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in self.keep)


class SearchConfig(_Strict):
    num_samples: int = Field(
        1, ge=1, le=10_000, description="draws of the sampled keys per grid point and dataset x method"
    )
    seed: int = Field(0, description="seed of those draws")


class SchedulerConfig(_Strict):
    type: Literal["asha", "fifo"] = Field(
        "asha", description="asha: early stopping; fifo: run every trial out"
    )
    grace_period: int | None = Field(
        None, ge=1, description="training steps before a trial can be stopped; default: validation.every"
    )
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: the trial's training.steps")


class ValidationConfig(_Strict):
    split: str = Field("val", min_length=1, description="real split the label sets and thresholds come from")
    n_per_label: int = Field(4, ge=1, le=10_000, description="generated images per label per validation")
    every: int | None = Field(
        None,
        ge=1,
        description="validate every this many training steps (the ASHA rungs); default: at the end",
    )
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    use_mllm: bool = Field(
        False, description="answer checklists with the config's MLLM (slow); default: the VLM surrogate"
    )
    q: float = Field(0.05, gt=0, lt=1, description="threshold quantile of real-image CAS (the tail)")
    cpus: float = Field(1.0, gt=0, description="CPUs of the validation task")
    gpus: float = Field(0.0, ge=0, description="GPUs of the validation task")


class ResourcesConfig(_Strict):
    workers: int | None = Field(None, ge=1, description="Ray Train workers per trial (scaling.workers)")
    gpus_per_worker: float | None = Field(None, ge=0)
    cpus_per_worker: float | None = Field(None, gt=0)
    resources_per_worker: dict[str, float] | None = Field(
        None,
        description="custom Ray resources per worker (scaling.resources_per_worker), e.g. {train_node: 1}",
    )
    trial_cpus: float = Field(
        0.25, gt=0, description="CPUs held by each trial's driver (it only waits on its training run)"
    )


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    storage: str = Field("runs/sweeps", description="sweeps go to <storage>/<name> (path or URI)")
    experiments: str = Field(
        "../{dataset}/{method}.yaml",
        description="experiment YAML of a dataset x method, relative to the spec file",
    )
    datasets: list[str] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted config keys set in every trial (training.steps, ...)"
    )
    dataset_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per dataset: dotted config keys (dataset.uri, ...)"
    )
    space: dict[str, Distribution]
    search: SearchConfig = Field(default_factory=SearchConfig)
    metric: Literal["val_cas", "val_tail"] = "val_cas"
    mode: Literal["max", "min"] | None = Field(None, description="default: max for val_cas, min for val_tail")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_concurrent_trials: int = Field(1, ge=1)
    max_failures: int = Field(1, ge=0, description="retries of a failed trial (it resumes its own run)")

    @field_validator("methods", mode="before")
    @classmethod
    def _names_are_entries(cls, methods: Any) -> Any:
        if isinstance(methods, list):
            return [{"name": m} if isinstance(m, str) else m for m in methods]
        return methods

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, datasets: list[str]) -> list[str]:
        unknown = [d for d in datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown dataset(s) {unknown} (known: {', '.join(DATASETS)})")
        if len(set(datasets)) != len(datasets):
            raise ValueError("a dataset is listed twice")
        return datasets

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        if not space:
            raise ValueError(
                "empty search space: name at least one config key to sweep, e.g. "
                "reward.weights.pathology: {grid: [0.5, 1, 2]}"
            )
        return space

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods: a method is listed twice ({names})")
        if self.mode is not None and self.mode != METRICS[self.metric]:
            raise ValueError(
                f"mode: {self.mode} would pick the worst trial by {self.metric} (better is {METRICS[self.metric]})"
            )
        unknown = set(self.dataset_overrides) - set(self.datasets)
        if unknown:
            raise ValueError(f"dataset_overrides: dataset(s) {sorted(unknown)} are not in datasets")
        return self

    @property
    def best_mode(self) -> str:
        return self.mode or METRICS[self.metric]

    def method(self, name: str) -> MethodEntry:
        return next(m for m in self.methods if m.name == name)


def _format(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"] if part not in ("function-after[_check()]",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{loc or '<root>'}: {msg}")
    return f"{source}: " + "; ".join(lines)  # one line, every problem


def placeholders(data: Any, where: str = "") -> list[tuple[str, str]]:
    """(field, value) of every "<...>" string: values the spec's author left for the user to fill in."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in placeholders(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in placeholders(v, f"{where}[{i}]")]
    if isinstance(data, str) and data.startswith(PLACEHOLDER[0]) and data.endswith(PLACEHOLDER[1]):
        return [(where, data)]
    return []


def placeholder_error(source: str, found: list[tuple[str, str]]) -> ConfigError:
    fields = "; ".join(f"{field}: {value}" for field, value in found)
    return ConfigError(
        f"{source}: replace the {len(found)} placeholder value(s) with real ones first ({fields})"
    )


def read_spec_yaml(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "sweep spec")


def validate_spec(data: dict[str, Any], source: str = "<spec>") -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(source, exc)) from None


def load_spec(path: str | Path, allow_placeholders: bool = False) -> SweepSpec:
    """Read and validate a sweep spec (its fields only; `plan_sweep` checks every trial's config)."""
    data = read_spec_yaml(path)
    spec = validate_spec(data, str(path))
    found = placeholders(data)
    if found and not allow_placeholders:
        raise placeholder_error(str(path), found)
    return spec


def is_sweep_spec(path: str | Path) -> bool:
    """A YAML with `datasets`, `methods` and `space` at the top is a sweep spec, not an experiment."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"datasets", "methods", "space"} <= set(data)
