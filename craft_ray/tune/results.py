"""A sweep's result tables: `results.parquet` (one row per trial) and `best/<dataset>.yaml`.

Everything is read back from the sweep directory (each rung's stored validation), not from Tune's
memory, so the tables are the same whether the sweep ran in one go or was interrupted and
restored. A trial is `completed` when it was validated at its last step, `stopped` when ASHA ended
it earlier, `error` when it failed (the error is kept), `pending` when it has not finished yet.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from craft_ray.cas.score import DIMENSIONS
from craft_ray.tune import store
from craft_ray.tune.space import SweepPlan, TrialPlan
from craft_ray.tune.spec import SweepSpec
from craft_ray.tune.trial import VALIDATION

RESULTS = "results.parquet"
BEST = "best"
METRIC_COLUMNS = ("val_cas", "val_tail", *(f"val_{d}" for d in DIMENSIONS))


def validations(sweep_uri: str, trial: str) -> list[dict[str, Any]]:
    folder = store.join(sweep_uri, VALIDATION, trial)
    records = [
        store.read_json(store.join(folder, n))
        for n in store.listdir(folder)
        if re.match(r"step_\d+\.json$", n)
    ]
    return sorted((r for r in records if r), key=lambda r: r["step"])


def _better(mode: str):
    return (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def trial_row(
    spec: SweepSpec, trial: TrialPlan, records: list[dict], tune_state: tuple[str, str | None]
) -> dict[str, Any]:
    """tune_state: the trial's Tune status (TERMINATED, ERROR, PENDING, ...) and error text."""
    metric, better = spec.metric, _better(spec.best_mode)
    last = records[-1] if records else {}
    best = None
    for record in records:
        if _finite(record.get(metric)) and (best is None or better(record[metric], best[metric])):
            best = record
    final_step = trial.rungs[-1]
    tune_status, error = tune_state
    if records and last["step"] >= final_step:
        status = "completed"
    elif tune_status == "ERROR":
        status = "error"
    elif records and tune_status == "TERMINATED":
        status = "stopped"  # by ASHA
    else:
        status = "pending"
    run_uri = last.get("run_uri") or None
    row: dict[str, Any] = {
        "trial": trial.name,
        "dataset": trial.dataset,
        "method": trial.method,
        "status": status,
        "steps": int(last.get("step", 0)),
        "total_steps": final_step,
        f"final_{metric}": last.get(metric, math.nan),
        f"best_{metric}": best[metric] if best else math.nan,
        "best_step": int(best["step"]) if best else None,
        **{c: last.get(c, math.nan) for c in METRIC_COLUMNS},
        "run_dir": run_uri,
        "checkpoint": store.join(run_uri, "final") if run_uri else None,
        "train_s": sum(r.get("train_s", 0.0) for r in records),
        "validate_s": sum(r.get("validate_s", 0.0) for r in records),
        "error": error if status == "error" else None,
    }
    for key in spec.space:
        value = trial.params.get(key)
        row[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return row


def results_table(
    spec: SweepSpec, plan: SweepPlan, sweep_uri: str, tune_states: dict[str, tuple[str, str | None]]
) -> pa.Table:
    rows = [
        trial_row(spec, t, validations(sweep_uri, t.name), tune_states.get(t.name, ("PENDING", None)))
        for t in plan.trials
    ]
    return pa.Table.from_pylist(rows)


def write_results(table: pa.Table, sweep_uri: str) -> str:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    uri = store.join(sweep_uri, RESULTS)
    store.write_bytes(uri, buffer.getvalue())
    return uri


def best_rows(table: pa.Table, spec: SweepSpec, by: tuple[str, ...] = ("dataset",)) -> dict[tuple, dict]:
    """The completed trial with the best final metric per group (ties: the first by trial name)."""
    better, column = _better(spec.best_mode), f"final_{spec.metric}"
    best: dict[tuple, dict] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["trial"]):
        if row["status"] != "completed" or not _finite(row[column]):
            continue
        key = tuple(row[k] for k in by)
        if key not in best or better(row[column], best[key][column]):
            best[key] = row
    return best


@dataclass
class BestConfig:
    dataset: str
    method: str  # the best trial's method
    per_method: bool  # best of its method (best/<d>/<method>.yaml), else of the dataset (best/<d>.yaml)
    trial: str
    value: float
    uri: str


def best_config_yaml(
    spec: SweepSpec, trial: TrialPlan, value: float, sweep_uri: str, name: str, per_method: bool
) -> str:
    """The trial's full experiment config, as a new experiment (`craft train --config` it)."""
    data = trial.cfg.model_dump(mode="json")
    data["name"] = name
    data["storage"] = {"path": "runs", "name": None}
    header = (
        f"# Best trial of sweep '{spec.name}' ({sweep_uri}) for {trial.dataset}"
        f"{' / ' + trial.method if per_method else ''}:\n"
        f"#   {trial.name}: {spec.metric} = {value:.6g} at step {trial.rungs[-1]} ({spec.best_mode} is better)\n"
        f"#   swept values: {trial.params or '(none)'}\n"
        f"# Train it: craft train --config <this file>\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def write_best(spec: SweepSpec, plan: SweepPlan, table: pa.Table, sweep_uri: str) -> list[BestConfig]:
    trials, written = plan.by_name(), []
    column = f"final_{spec.metric}"
    for by in (("dataset",), ("dataset", "method")):
        for key, row in best_rows(table, spec, by).items():
            trial = trials[row["trial"]]
            if len(key) == 1:
                name, uri = (
                    f"{spec.name}-{trial.dataset}-best",
                    store.join(sweep_uri, BEST, f"{trial.dataset}.yaml"),
                )
            else:
                name = f"{spec.name}-{trial.dataset}-{trial.method}-best".replace("_", "-")
                uri = store.join(sweep_uri, BEST, trial.dataset, f"{trial.method}.yaml")
            store.write_text(uri, best_config_yaml(spec, trial, row[column], sweep_uri, name, len(key) > 1))
            written.append(
                BestConfig(trial.dataset, trial.method, len(key) > 1, trial.name, row[column], uri)
            )
    return written
