"""From a sweep spec to the list of trials, every trial's experiment config validated up front.

Each dataset x method reads its experiment YAML (the spec's `experiments` template), applies the
spec's `overrides`, `dataset_overrides` and `resources`, and then the swept values its method
reads. Every value a key can take (grid/choice values, interval ends) is checked against every
experiment, so a bad spec stops before any work with one line naming the spec field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from craft_ray.config import ExperimentConfig, load_config
from craft_ray.data.reading import read_manifest
from craft_ray.errors import ConfigError, CraftError, DataError
from craft_ray.train.methods import get_method
from craft_ray.tune.space import SweepPlan, TrialPlan, points, reads, rungs, trial_name
from craft_ray.tune.spec import SweepSpec

RUNS = "runs"


def experiment_path(spec: SweepSpec, spec_path: Path, dataset: str, method: str, index: int) -> Path:
    path = (spec_path.parent / spec.experiments.format(dataset=dataset, method=method)).resolve()
    if path.is_file():
        return path
    folder = path.parent
    known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    raise ConfigError(
        f"{spec_path}: methods[{index}]: unknown method {method!r} for dataset {dataset}: no experiment {path}"
        + (f" (known: {', '.join(known)})" if known else "")
    )


def fixed_overrides(spec: SweepSpec, dataset: str, method: str) -> dict[str, Any]:
    """What every trial of a dataset x method sets: the spec's overrides (general, per dataset, per
    method) and its resources per trial."""
    res = spec.resources
    resources = {
        "scaling.workers": res.workers,
        "scaling.gpus_per_worker": res.gpus_per_worker,
        "scaling.cpus_per_worker": res.cpus_per_worker,
        "scaling.resources_per_worker": res.resources_per_worker,
    }
    return {
        **spec.overrides,
        **spec.dataset_overrides.get(dataset, {}),
        **spec.method(method).overrides,
        **{k: v for k, v in resources.items() if v is not None},
    }


def _load(path: Path, overrides: dict[str, Any], where: str) -> ExperimentConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {' / '.join(str(exc).splitlines())}") from None


def check_space_values(spec: SweepSpec, spec_path: Path, bases: dict[tuple[str, str], Path]) -> None:
    """Every value a swept key can take must make a valid experiment config (whatever the method)."""
    for key, dist in spec.space.items():
        for value in dist.extremes():
            for (dataset, method), path in bases.items():
                _load(
                    path,
                    {**fixed_overrides(spec, dataset, method), key: value},
                    f"{spec_path}: space.{key}: {value!r} is not valid for {dataset}/{method}",
                )


def check_data(cfg: ExperimentConfig, spec: SweepSpec, spec_path: Path) -> None:
    try:
        manifest = read_manifest(cfg.dataset.uri)
    except CraftError as exc:
        raise DataError(f"{spec_path}: dataset {cfg.dataset.name}: {exc}") from None
    for split in {spec.validation.split, cfg.dataset.train_split}:
        if split not in manifest.counts:
            raise DataError(
                f"{spec_path}: dataset {cfg.dataset.name} at {cfg.dataset.uri} has no split '{split}' "
                f"(splits: {', '.join(sorted(manifest.counts))})"
            )


def plan_sweep(spec: SweepSpec, spec_path: str | Path, sweep_uri: str, with_data: bool = True) -> SweepPlan:
    """Every trial with its validated config; `with_data` also checks each dataset's files."""
    spec_path = Path(spec_path)
    bases = {
        (d, m.name): experiment_path(spec, spec_path, d, m.name, i)
        for d in spec.datasets
        for i, m in enumerate(spec.methods)
    }
    check_space_values(spec, spec_path, bases)
    draws, trials, notes, read_by_any, checked = points(spec), [], [], set(), set()
    runs_uri = f"{sweep_uri.rstrip('/')}/{RUNS}"
    for dataset in spec.datasets:
        for entry in spec.methods:
            path, fixed = bases[(dataset, entry.name)], fixed_overrides(spec, dataset, entry.name)
            base = _load(path, fixed, f"{spec_path}: {dataset}/{entry.name}")
            if base.dataset.name != dataset:
                raise ConfigError(
                    f"{spec_path}: experiments: {path} is a '{base.dataset.name}' experiment, listed for {dataset}"
                )
            if with_data and base.dataset.uri not in checked:
                check_data(base, spec, spec_path)
                checked.add(base.dataset.uri)
            swept = [k for k in spec.space if reads(base, k) and not entry.keeps(k)]
            read_by_any.update(swept)
            seen: set[str] = set()
            for point in draws:
                params = {k: point[k] for k in swept}
                name = trial_name(dataset, entry.name, params)
                if name in seen:
                    continue
                seen.add(name)
                cfg = _load(
                    path,
                    {**fixed, **params, "storage.path": runs_uri, "storage.name": name},
                    f"{spec_path}: trial {name}",
                ).resolved()
                trains = get_method(cfg.method).adapter is not None
                trials.append(
                    TrialPlan(
                        name,
                        dataset,
                        entry.name,
                        params,
                        cfg,
                        rungs(cfg.training.steps, spec.validation.every, trains),
                    )
                )
    for key in spec.space:
        if key not in read_by_any:
            notes.append(f"space.{key} is read by none of the methods swept: it adds no trials")
    return SweepPlan(trials, notes)
