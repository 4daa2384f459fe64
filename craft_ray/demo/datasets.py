"""The demo across datasets: what is dataset-specific (`experiments/demo/datasets/<dataset>.yaml`:
the dataset section and the labels evaluated), the check that the shipped phantom models of each
dataset's modality exist before any work, and the paper-style table across datasets.

Every other setting (methods, steps, sampler, reward, evaluation sizes) is shared: the same
experiment YAMLs run on every dataset, and the names `phantom` / `phantom-eval` resolve to each
dataset's modality.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from craft_ray.config import ExperimentConfig, read_yaml_mapping
from craft_ray.errors import ConfigError, ModelError
from craft_ray.model_names import family_of, missing_local_path

DATASET_SETTINGS = "datasets"  # experiments/demo/datasets/<dataset>.yaml
ALL = "all"


def available(experiments: Path) -> list[str]:
    return sorted(p.stem for p in (experiments / DATASET_SETTINGS).glob("*.yaml"))


def dataset_overrides(experiments: Path, dataset: str) -> dict[str, Any]:
    """The demo's settings of one dataset as dotted config keys."""
    path = experiments / DATASET_SETTINGS / f"{dataset}.yaml"
    if not path.is_file():
        from craft_ray.knowledge.labels import DATASETS

        names = available(experiments)
        if dataset.lower() in (*names, ALL):
            hint = f"; names are lower case: {dataset.lower()}"
        else:
            same = [d for d in names if d in DATASETS and DATASETS[d].modality == dataset.lower()]
            hint = f"; {dataset} is a modality: the dataset is {same[0]}" if same else ""
        raise ConfigError(
            f"--dataset {dataset!r}: not a dataset of this demo ({', '.join(names) or 'none'}, or all; "
            f"settings in {path.parent}){hint}"
        )
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", read_yaml_mapping(path, "demo dataset settings"))
    return flat


def datasets_of(experiments: Path, choice: str) -> list[str]:
    """The datasets of `--dataset`: one name, several comma-separated (in the order given), or
    `all` (every dataset with settings)."""
    if choice == ALL:
        names = available(experiments)
        if not names:
            raise ConfigError(f"--dataset all: {experiments / DATASET_SETTINGS} holds no dataset settings")
        return names
    names = [name.strip() for name in choice.split(",")]  # "chexpert, fundus" reads as two names
    if ALL in names:
        raise ConfigError(f"--dataset {choice!r}: all already names every dataset; give it alone")
    if "" in names:
        raise ConfigError(
            f"--dataset {choice!r}: name one dataset, several separated by commas, or all "
            f"(datasets: {', '.join(available(experiments))})"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"--dataset {choice!r}: {', '.join(repeated)} named twice")
    for name in names:
        dataset_overrides(experiments, name)  # a clear error for an unknown one
    return names


def check_shipped_models(cfg: ExperimentConfig) -> None:
    """Every shipped phantom model an experiment names exists for its modality (otherwise a one-line
    ModelError naming the `craft pretrain` command that makes it), and every model named by a local
    path exists, before anything starts."""
    from craft_ray.models.phantom import phantom_classifier_dir, phantom_diffusion_dir, phantom_vlm_dir

    named = [
        ("model.vlm", cfg.model.vlm, phantom_vlm_dir),
        ("evaluation.vlm", cfg.evaluation.vlm, phantom_vlm_dir),
        ("evaluation.classifier", cfg.evaluation.classifier, phantom_classifier_dir),
        ("reward.classifier", cfg.reward.classifier, phantom_classifier_dir),
        ("model.base", cfg.model.base, lambda spec, config_key: phantom_diffusion_dir(spec)),  # one base
    ]
    for key, spec, resolve in named:
        if missing_local_path(spec):
            raise ModelError(f"{key}: {spec!r}: no such directory")
        if family_of(spec) is not None:
            resolve(spec, config_key=key)


# -- the table across datasets -------------------------------------------------------------


def _main_vs(summary: dict[str, Any], baseline: str, key: str) -> dict[str, Any] | None:
    return summary.get("pooled", {}).get(baseline, {}).get(key)


def strongest_tail_baseline(summary: dict[str, Any]) -> str | None:
    """The baseline with the lowest mean tail share over the seeds."""
    methods = summary["methods"]
    baselines = [m for m in methods if m != summary["main"]]
    finite = [m for m in baselines if math.isfinite(methods[m]["tail_share"]["mean"])]
    return min(finite, key=lambda m: methods[m]["tail_share"]["mean"], default=None)


def across_datasets(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and method the headline numbers (means over seeds); per dataset the main method's
    tail reduction against the strongest baseline (pooled paired CI over seeds), and the average
    relative tail reduction across datasets (the paper reports 20.4 %)."""
    rows, reductions = {}, {}
    for dataset, summary in summaries.items():
        rows[dataset] = {
            method: {key: stats["mean"] for key, stats in columns.items()}
            for method, columns in summary["methods"].items()
        }
        base = strongest_tail_baseline(summary)
        pooled = _main_vs(summary, base, "tail:overall") if base else None
        if pooled is not None:
            reductions[dataset] = {
                "baseline": base,
                "points": -100 * pooled["difference"],
                "points_ci": [-100 * pooled["ci"][1], -100 * pooled["ci"][0]],
                "relative": pooled.get("relative_reduction"),
                "verdict": pooled["verdict"],
                "oof_auroc": _main_vs(summary, base, "oof_auroc:macro"),
            }
    relative = [r["relative"] for r in reductions.values() if r.get("relative") is not None]
    return {
        "rows": rows,
        "tail_reduction": reductions,
        "mean_relative_tail_reduction": sum(relative) / len(relative) if relative else None,
    }
