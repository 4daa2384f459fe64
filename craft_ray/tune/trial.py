"""One sweep trial: a Tune function trainable that trains in rungs and validates after each.

For rung r it trains the trial's own run (`<sweep>/runs/<trial name>`, a deterministic name) to
step r x `validation.every` with `craft_ray.train.trainer.run_training` (a Ray Train
`TorchTrainer` started inside the trial, as Train v2 does it with Tune), resuming the run's latest
checkpoint, then validates the new weights in a Ray task and reports one result to Tune, on which
ASHA decides. Each validation is stored under `<sweep>/validation/<trial>/step_NNNNNN.json`, so a
trial that is retried or restored after the driver died re-reports what it already has and
trains only what is missing. Training progress is forwarded to Tune too (without the metric, so
ASHA ignores it) for the live table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from craft_ray.config import ExperimentConfig
from craft_ray.tune import store

VALIDATION = "validation"
PHASE_TRAIN, PHASE_VALIDATED = "train", "validated"


@dataclass
class SweepContext:
    """What every trial needs besides its Tune config (handed over with `tune.with_parameters`)."""

    sweep_uri: str
    trials: dict[str, dict[str, Any]]  # name -> {"cfg": experiment config (json), "rungs": [...]}
    calibrations: dict[str, dict[str, Any]]  # dataset -> calibration (asdict)
    validation: dict[str, Any]  # ValidationConfig (json)
    extra: dict[str, Any] = field(default_factory=dict)


def validation_uri(sweep_uri: str, trial: str, step: int) -> str:
    return store.join(sweep_uri, VALIDATION, trial, f"step_{step:06d}.json")


def trained_step(run_uri: str) -> int | None:
    """The step of the run's exported final weights (what the last finished training call reached)."""
    card = store.read_json(store.join(run_uri, "final", "model.json"))
    return None if card is None else int(card.get("step", -1))


def train_to(cfg: ExperimentConfig, step: int, on_report) -> str:
    """Train (or continue) the trial's run to `step`; returns the run's URI."""
    from craft_ray.train.trainer import run_exists, run_training

    run_uri = store.join(cfg.storage_uri(), cfg.run_name)
    done = trained_step(run_uri)
    if done is not None and done >= step:
        return run_uri
    upto = cfg.model_copy(update={"training": cfg.training.model_copy(update={"steps": step})})
    run_training(upto, resume=run_exists(run_uri), on_report=on_report)
    return run_uri


def validate(context: SweepContext, cfg: ExperimentConfig, run_uri: str | None) -> dict[str, float]:
    """The validation as a Ray task with the sweep's validation resources, outside the trial's
    placement group (which holds only the trial driver's few CPUs)."""
    import ray

    from craft_ray.tune.validation import validate_model

    v = context.validation
    task = ray.remote(validate_model).options(
        num_cpus=v["cpus"], num_gpus=v["gpus"], scheduling_strategy="DEFAULT", max_retries=1
    )
    calibration = context.calibrations[cfg.dataset.name]
    return ray.get(task.remote(cfg.model_dump(mode="json"), run_uri, calibration, v))


def run_rung(context: SweepContext, name: str, rung: int, step: int, trains: bool, report) -> dict[str, Any]:
    cfg = ExperimentConfig.model_validate(context.trials[name]["cfg"])
    started = time.perf_counter()

    def on_report(metrics: dict[str, Any]) -> None:
        shown = {k: metrics[k] for k in ("loss", "reward") if isinstance(metrics.get(k), float)}
        report({"phase": PHASE_TRAIN, "step": float(metrics.get("step", 0)), **shown})

    run_uri = train_to(cfg, step, on_report) if trains else None
    trained = time.perf_counter()
    metrics = validate(context, cfg, run_uri)
    return {
        **metrics,
        "step": float(step),
        "rung": float(rung),
        "run_uri": run_uri or "",
        "train_s": trained - started,
        "validate_s": time.perf_counter() - trained,
    }


def run_trial(config: dict[str, Any], context: SweepContext, rung_runner=None) -> None:
    """The function trainable (`tune.with_parameters(run_trial, context=...)`); `rung_runner`
    (default `run_rung`) trains and validates one rung."""
    from ray import tune

    name = config["name"]
    rungs = context.trials[name]["rungs"]
    trains = rungs != [0]
    for rung, step in enumerate(rungs, 1):
        uri = validation_uri(context.sweep_uri, name, step)
        record = store.read_json(uri)
        if record is None:
            record = (rung_runner or run_rung)(context, name, rung, step, trains, tune.report)
            # when it was validated: a restarted sweep's ASHA replays the stored rungs in this order
            record["validated_at"] = time.time()
            store.write_json(uri, record)
        tune.report({**record, "phase": PHASE_VALIDATED})
