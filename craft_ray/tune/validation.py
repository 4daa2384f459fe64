"""The short validation after each rung of a trial: generate a few images per label for label sets
of the real validation split, score them with the evaluation CAS, and compare with the real
images' per-label thresholds.

It reuses `craft evaluate`'s generation and scoring stages (same prompts, sampler and evaluator;
image seeds from the plan's `validate` stream, disjoint from `craft evaluate`'s) outside Ray Data: a few dozen images do not need a pipeline. The evaluator is the
evaluation's (`evaluation.weights`, the same for every trial), never the trial's reward weights,
so trials with different reward weights are compared on one scale. Validations run as Ray tasks
with their own resources, so a trial holds no GPU while it only waits for its training run.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from craft_ray.cas.calibration import Calibration, calibrate
from craft_ray.cas.score import DIMENSIONS, EvaluatorSpec
from craft_ray.config import ExperimentConfig
from craft_ray.data.reading import read_table
from craft_ray.evaluation.generation import SamplerSettings
from craft_ray.evaluation.plan import Plan, make_plan
from craft_ray.evaluation.references import evaluation_spec
from craft_ray.evaluation.source import ModelSource, open_run
from craft_ray.tune import store
from craft_ray.tune.spec import ValidationConfig


def validation_spec(cfg: ExperimentConfig, validation: ValidationConfig) -> EvaluatorSpec:
    """The evaluation's evaluator, with the MLLM only when the sweep asks for it."""
    spec = evaluation_spec(cfg)
    if not validation.use_mllm:
        spec.mllm = spec.mllm_model = None
    return spec


def calibration_identity(cfg: ExperimentConfig, validation: ValidationConfig) -> dict[str, Any]:
    return {
        "evaluator": validation_spec(cfg, validation).to_dict(),
        "data": cfg.dataset.uri,
        "split": validation.split,
        "q": validation.q,
    }


def make_calibration(cfg_json: dict[str, Any], validation_json: dict[str, Any]) -> dict[str, Any]:
    """Per-label thresholds and the realism reference from the real validation images (a Ray task)."""
    cfg = ExperimentConfig.model_validate(cfg_json)
    validation = ValidationConfig.model_validate(validation_json)
    cal = calibrate(validation_spec(cfg, validation), cfg.dataset.uri, validation.split, q=validation.q)
    return asdict(cal)


def _source(cfg: ExperimentConfig, run_uri: str | None, scratch: Path) -> ModelSource:
    if run_uri is None:  # a method that trains nothing: the base model as it is
        return ModelSource(cfg, f"pretrained:{cfg.model.base}", "pretrained", None, None, None, None)
    final = store.join(run_uri, "final")
    if store.local_path(run_uri) is None:
        store.download_dir(final, scratch / "run" / "final")
        return open_run(scratch / "run")
    return open_run(store.local_path(run_uri))


def summarise(scored: pa.Table) -> dict[str, float]:
    """val_cas (mean CAS), val_tail (share below the label threshold, among images that have one),
    the mean of each dimension, and the number of images."""
    cas = np.asarray(scored.column("cas").to_pylist(), dtype=float)
    thresholds = np.asarray(scored.column("threshold").to_pylist(), dtype=float)
    known = ~np.isnan(thresholds)
    out = {
        "val_cas": float(np.mean(cas)),
        "val_tail": float(np.mean(cas[known] < thresholds[known])) if known.any() else math.nan,
        "val_images": float(len(cas)),
    }
    for dim in DIMENSIONS:
        values = np.asarray(scored.column(dim).to_pylist(), dtype=float)
        out[f"val_{dim}"] = float(np.nanmean(values)) if not np.isnan(values).all() else math.nan
    return out


def validation_plan(cfg: ExperimentConfig, validation: ValidationConfig) -> Plan:
    """The validation's label sets (from the real validation split) and image seeds: one shard."""
    label_sets = (
        read_table(cfg.dataset.uri, validation.split, columns=["labels"]).column("labels").to_pylist()
    )
    return make_plan(
        label_sets,
        list(cfg.dataset.label_space),
        validation.n_per_label,
        validation.seed,
        10**9,
        validation.batch_size,
        stream="validate",  # never the images `craft evaluate` grades the selected trial on
    )


def validate_model(
    cfg_json: dict[str, Any],
    run_uri: str | None,
    calibration: dict[str, Any],
    validation_json: dict[str, Any],
) -> dict[str, float]:
    """Generate `n_per_label` images per label with the run's final weights and score them (a Ray task)."""
    from craft_ray.evaluation.stages import GenerateStage, ScoreStage

    cfg = ExperimentConfig.model_validate(cfg_json)
    validation = ValidationConfig.model_validate(validation_json)
    plan = validation_plan(cfg, validation)
    threads = max(1, int(validation.cpus))
    with tempfile.TemporaryDirectory(prefix="craft-validate-") as scratch:
        source = _source(cfg, run_uri, Path(scratch))
        sampler = SamplerSettings.from_config(source.cfg)
        generate = GenerateStage({"source": source.to_dict(), "sampler": asdict(sampler)}, threads)
        score = ScoreStage({"calibration": calibration, "embedding": "pixels"}, threads)
        tables = []
        for group in plan.groups(range(plan.n_shards)):
            batch = pa.table({"rows": [json.dumps([row.as_dict() for row in group])]})
            tables.append(score(generate(batch)))
    return summarise(pa.concat_tables(tables))


def load_calibration(uri: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    data = store.read_json(uri)
    if data is None or data.get("identity") != identity:
        return None
    Calibration.from_dict(data["calibration"])  # still a valid calibration
    return data["calibration"]
