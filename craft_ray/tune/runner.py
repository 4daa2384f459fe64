"""`craft sweep` end to end: plan and check every trial, calibrate the validation once per
dataset, run (or restore) the Tune experiment, and write the result tables.

The sweep directory `<storage>/<name>/`:

```
sweep.json            the spec and the trial list the sweep was started with (its identity)
calibration/<d>.json  per-label thresholds and realism reference of dataset d's validation split
tune/                 Ray Tune's experiment (restored from here after an interruption)
runs/<trial>/         each trial's training run (checkpoints, metrics.jsonl, final/)
validation/<trial>/   each rung's validation (step_NNNNNN.json)
results.parquet       one row per trial
best/<d>.yaml         the best trial's experiment config per dataset (best/<d>/<method>.yaml per method)
```

Running the same command again continues an interrupted sweep with `Tuner.restore` (unfinished
and errored trials are resumed, finished ones are not run again); a sweep directory made from a
different spec is refused.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from craft_ray.errors import ConfigError, CraftError
from craft_ray.tune import store
from craft_ray.tune.plan import plan_sweep
from craft_ray.tune.results import BestConfig, results_table, write_best, write_results
from craft_ray.tune.space import SweepPlan
from craft_ray.tune.spec import SweepSpec, load_spec
from craft_ray.tune.trial import SweepContext, run_trial
from craft_ray.tune.validation import calibration_identity, load_calibration, make_calibration

STATE = "sweep.json"
TUNE_DIR = "tune"
CALIBRATION = "calibration"
IGNORED_FIELDS = ("description", "storage")  # fields that may change between runs of one sweep


@dataclass
class SweepResult:
    sweep_uri: str
    results_uri: str
    table: pa.Table
    best: list[BestConfig]
    plan: SweepPlan
    restored: bool
    unfinished: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: plan, calibrate, tune, results


def identity(spec: SweepSpec, plan: SweepPlan) -> dict[str, Any]:
    fields = {k: v for k, v in spec.model_dump(mode="json").items() if k not in IGNORED_FIELDS}
    return {"spec": fields, "trials": [t.name for t in plan.trials]}


def check_sweep_dir(sweep_uri: str, ident: dict[str, Any], resume: bool) -> bool:
    """True when the directory holds this sweep already; errors for a different sweep or a clash."""
    state = store.read_json(store.join(sweep_uri, STATE))
    if state is None:
        if resume:
            raise CraftError(f"nothing to resume: no sweep in {sweep_uri}")
        if store.listdir(sweep_uri):
            raise CraftError(
                f"{sweep_uri} exists and is not a sweep directory; choose another --storage or name"
            )
        return False
    if state.get("identity") != ident:
        old, new = state.get("identity", {}).get("spec", {}), ident["spec"]
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not changed and state.get("identity", {}).get("trials") != ident["trials"]:
            changed = ["the experiment YAMLs it reads (the trial list differs)"]
        raise CraftError(
            f"{sweep_uri} holds sweep '{new.get('name')}' made from a different spec (changed: {', '.join(changed)}); "
            "give the sweep a new name or --storage, or restore the spec it was started with"
        )
    return True


def calibrations(
    spec: SweepSpec, plan: SweepPlan, sweep_uri: str, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """One calibration per dataset (Ray tasks, cached in the sweep directory). Every trial of a
    dataset must validate with the same evaluator and data: they are compared on one scale."""
    import ray

    firsts: dict[str, Any] = {}
    for trial in plan.trials:
        ident = calibration_identity(trial.cfg, spec.validation)
        first = firsts.setdefault(trial.dataset, (trial, ident))
        if first[1] != ident:
            raise ConfigError(
                f"trials {first[0].name} and {trial.name} validate with different evaluators or data "
                f"({first[1]} vs {ident}); a sweep compares the trials of a dataset on one scale"
            )
    out, pending = {}, {}
    task = ray.remote(make_calibration).options(num_cpus=spec.validation.cpus, num_gpus=spec.validation.gpus)
    for dataset, (trial, ident) in firsts.items():
        uri = store.join(sweep_uri, CALIBRATION, f"{dataset}.json")
        cached = load_calibration(uri, ident)
        if cached is not None:
            out[dataset] = cached
            continue
        say(
            f"calibrating the validation CAS of {dataset} on {trial.cfg.dataset.uri} [{spec.validation.split}]"
        )
        pending[dataset] = (
            uri,
            ident,
            task.remote(trial.cfg.model_dump(mode="json"), spec.validation.model_dump()),
        )
    for dataset, (uri, ident, ref) in pending.items():
        out[dataset] = ray.get(ref)
        store.write_json(uri, {"identity": ident, "calibration": out[dataset]})
    return out


def make_tuner(spec: SweepSpec, plan: SweepPlan, sweep_uri: str, context: SweepContext, console, say):
    from ray import tune

    from craft_ray.tune.progress import LiveTable
    from craft_ray.tune.scheduler import build_scheduler

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": spec.resources.trial_cpus}
    )
    tune_uri = store.join(sweep_uri, TUNE_DIR)
    if tune.Tuner.can_restore(tune_uri):
        if state_readable(tune_uri):
            say(
                f"continuing the sweep in {sweep_uri} (finished trials are kept, the others resume their runs)"
            )
            return tune.Tuner.restore(tune_uri, trainable, resume_errored=True), True
        aside = f"{tune_uri}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        store.move(tune_uri, aside)
        say(
            f"continuing the sweep in {sweep_uri}: Tune's saved state is unreadable (the driver died while "
            f"writing it; kept in {aside}), so every trial is started again from what the sweep stored: "
            "validated rungs are replayed, not recomputed, and training resumes from each run's checkpoints"
        )
    table = LiveTable(spec.metric, spec.best_mode, {t.name: t.rungs[-1] for t in plan.trials}, console)
    tuner = tune.Tuner(
        trainable,
        param_space={"name": tune.grid_search([t.name for t in plan.trials])},
        tune_config=tune.TuneConfig(
            scheduler=build_scheduler(spec, plan, sweep_uri),
            num_samples=1,
            max_concurrent_trials=spec.max_concurrent_trials,
            trial_name_creator=lambda trial: trial.config["name"],
            trial_dirname_creator=lambda trial: trial.config["name"],
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=sweep_uri,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[table],
            verbose=0,
        ),
    )
    return tuner, False


def state_readable(tune_uri: str) -> bool:
    """Whether Tune's newest experiment state parses: a driver killed while Tune was writing it
    leaves it truncated, and Tune would then restart the experiment without its trials."""
    import json

    states = [n for n in store.listdir(tune_uri) if n.startswith("experiment_state-") and n.endswith(".json")]
    if not states:
        return False
    try:
        json.loads(store.read_text(store.join(tune_uri, max(states))) or "")
    except ValueError:
        return False
    return True


def tune_states(sweep_uri: str) -> dict[str, tuple[str, str | None]]:
    """Each trial's Tune status and, for a failed one, the last line of its error."""
    from ray.tune import ExperimentAnalysis

    states = {}
    for trial in ExperimentAnalysis(store.join(sweep_uri, TUNE_DIR)).trials:
        error = None
        if trial.status == "ERROR":
            exc = trial.get_error()
            error = (str(exc).strip().splitlines() or ["failed"])[-1][:500] if exc else "failed"
        states[trial.config["name"]] = (trial.status, error)
    return states


def run_sweep(
    spec_path: str | Path,
    storage: str | None = None,
    resume: bool = False,
    address: str | None = None,
    say: Callable[[str], None] = print,
    console=None,
) -> SweepResult:
    """Run the sweep of `spec_path` (or continue it); returns where the results are."""
    from craft_ray.raycluster import ensure_ray

    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(phase: str) -> None:
        now = time.perf_counter()
        timings[phase] = now - clock[0]
        clock[0] = now

    spec = load_spec(spec_path)
    sweep_uri = store.absolute_uri(store.join(storage or spec.storage, spec.name))
    plan = plan_sweep(spec, spec_path, sweep_uri)
    for note in plan.notes:
        say(note)
    ident = identity(spec, plan)
    existing = check_sweep_dir(sweep_uri, ident, resume)
    say(ensure_ray(address))
    lap("plan")
    if not existing:
        trials = [{"name": t.name, **t.tune_config(), "rungs": t.rungs} for t in plan.trials]
        store.write_json(store.join(sweep_uri, STATE), {"identity": ident, "trials": trials})
    groups = len({t.group for t in plan.trials})
    say(f"sweep '{spec.name}': {len(plan.trials)} trials in {groups} dataset x method groups -> {sweep_uri}")
    context = SweepContext(
        sweep_uri,
        {t.name: {"cfg": t.cfg.model_dump(mode="json"), "rungs": t.rungs} for t in plan.trials},
        calibrations(spec, plan, sweep_uri, say),
        spec.validation.model_dump(),
    )
    lap("calibrate")
    tuner, restored = make_tuner(spec, plan, sweep_uri, context, console, say)
    with contextlib.redirect_stdout(sys.stderr):  # Tune's banner: stdout is for the results
        tuner.fit()
    lap("tune")
    table = results_table(spec, plan, sweep_uri, tune_states(sweep_uri))
    results_uri = write_results(table, sweep_uri)
    best = write_best(spec, plan, table, sweep_uri)
    unfinished = [r["trial"] for r in table.to_pylist() if r["status"] == "pending"]
    lap("results")
    return SweepResult(sweep_uri, results_uri, table, best, plan, restored, unfinished, timings)
