"""`craft sweep` on a real local Ray cluster: a reduced smoke sweep killed mid-way and resumed, its
result tables, its best.yaml trained; ASHA per dataset x method on a constructed case."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from craft_ray.config import load_config
from craft_ray.tune.spec import validate_spec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def reduced_smoke_spec(tmp_path: Path, data: Path) -> Path:
    """The shipped smoke sweep, cut down: one dataset, CRAFT x 2 reward weights + pretrained."""
    spec = yaml.safe_load((REPO / "experiments" / "sweeps" / "smoke.yaml").read_text())
    spec.update(
        experiments=str(REPO / "experiments" / "{dataset}" / "{method}.yaml"),
        storage=str(tmp_path / "sweeps"),
        datasets=["chexpert"],
        methods=["craft", "pretrained"],
        dataset_overrides={"chexpert": {"dataset.uri": str(data)}},
        max_concurrent_trials=1,
    )
    spec["overrides"].update(
        {
            "dataset.resolution": 16,
            "training.steps": 2,
            "training.sampler_steps": 2,
            "training.checkpoint_every": 1,
        }
    )
    spec["validation"].update(n_per_label=2, every=None)
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def metric_lines(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_smoke_sweep_killed_and_resumed_then_best_config_trains(
    ray_local, phantom_root, tmp_path, craft_in_process
):
    from craft_ray.train.trainer import run_training

    spec = reduced_smoke_spec(tmp_path, phantom_root / "chest")
    sweep = tmp_path / "sweeps" / "smoke"
    args = [sys.executable, "-m", "craft_ray.cli", "sweep", "--spec", str(spec)]
    log = tmp_path / "first-driver.log"  # a file, not a pipe: nobody reads a pipe while we wait
    with log.open("w") as out:
        driver = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 480
    while not list(sweep.glob("validation/chexpert-craft-pathology1*/step_000002.json")):
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the first trial did not finish in time"
        time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)  # the driver dies without any clean-up
    driver.wait()
    first = next(sweep.glob("validation/chexpert-craft-pathology1*")).name
    done_before = metric_lines(sweep / "runs" / first)
    assert [r["step"] for r in done_before] == [1.0, 2.0]

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "continuing the sweep" in again.stderr
    table = pq.read_table(sweep / "results.parquet").to_pylist()
    rows = {r["trial"]: r for r in table}
    assert len(rows) == 3 and {r["status"] for r in table} == {"completed"}
    assert sorted((r["method"], r["reward.weights.pathology"]) for r in table) == [
        ("craft", 1.0),
        ("craft", 3.0),
        ("pretrained", None),
    ]
    assert all(0.0 <= r["val_cas"] <= 1.0 and 0.0 <= r["val_tail"] <= 1.0 for r in table)
    assert all(r["final_val_cas"] == r["best_val_cas"] == r["val_cas"] for r in table)  # one rung each
    # the finished trial was not trained again; the other ran its steps once more at most from a checkpoint
    assert metric_lines(sweep / "runs" / first) == done_before
    second = next(n for n, r in rows.items() if r["method"] == "craft" and n != first)
    steps = [r["step"] for r in metric_lines(sweep / "runs" / second)]
    assert steps[-1] == 2.0 and len(steps) <= 3 and set(steps) == {1.0, 2.0}
    assert not (sweep / "runs" / "chexpert-pretrained").exists()  # nothing to train: validated as it is
    assert rows[first]["checkpoint"] == str(sweep / "runs" / first / "final")

    # a driver killed while Tune wrote its experiment state leaves it truncated (seen): the rerun
    # starts every trial afresh from what the sweep stored, and a finished sweep stays as it was
    state = max((sweep / "tune").glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:100])
    lines_before = {n: metric_lines(sweep / "runs" / n) for n in rows if (sweep / "runs" / n).exists()}
    third = craft_in_process("sweep", "--spec", str(spec))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Tune's saved state is unreadable" in third.stderr
    assert pq.read_table(sweep / "results.parquet").to_pylist() == table
    assert {n: metric_lines(sweep / "runs" / n) for n in lines_before} == lines_before  # nothing retrained

    best = max(table, key=lambda r: (r["final_val_cas"], r["trial"] == min(rows)))
    best_yaml = sweep / "best" / "chexpert.yaml"
    assert f"{best['trial']}:" in best_yaml.read_text()
    check = craft_in_process("config", "validate", str(best_yaml))
    assert check.returncode == 0, check.stderr
    cfg = load_config(best_yaml, {"training.steps": 1, "storage.path": str(tmp_path / "best-runs")})
    assert cfg.method == best["method"] and cfg.training.sampler_steps == 2 and cfg.dataset.resolution == 16
    if best["method"] == "craft":
        assert cfg.reward.weights.pathology == best["reward.weights.pathology"]
    summary = run_training(cfg)
    exported = json.loads(Path(summary.final_uri, "model.json").read_text())["step"]
    assert exported == (0 if best["method"] == "pretrained" else 1)  # pretrained trains nothing
    # a driver killed after the last checkpoint was written but before Ray Train registered it (no
    # snapshot) and before the export: resuming has nothing left to train and exports the newest
    # checkpoint (a restored sweep trial took this path and failed)
    shutil.rmtree(summary.final_uri)
    Path(summary.run_uri, "checkpoint_manager_snapshot.json").unlink()
    again = run_training(cfg, resume=True)
    assert json.loads(Path(again.final_uri, "model.json").read_text())["step"] == exported

    report = craft_in_process("report", "--sweep", str(sweep), "--out", str(tmp_path / "rep"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert (
        best["trial"] in text
        and (tmp_path / "rep" / "figures" / "sweep_chexpert_craft.png").stat().st_size > 0
    )


def test_asha_stops_the_worse_trial_of_a_group_only(ray_local, tmp_path):
    """The sweep's scheduler (one ASHA per dataset x method) on trials with known metrics."""
    from ray import tune

    from craft_ray.tune.scheduler import build_scheduler
    from craft_ray.tune.space import SweepPlan, TrialPlan

    spec = validate_spec(
        {
            "name": "asha",
            "datasets": ["chexpert", "isic"],
            "methods": ["craft"],
            "space": {"reward.weights.pathology": [1.0, 2.0]},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        }
    )
    values = {"good": 0.9, "bad": 0.1, "other-dataset": 0.05}  # run in this order
    groups = {"good": "chexpert/craft", "bad": "chexpert/craft", "other-dataset": "isic/craft"}
    plan = SweepPlan(
        [TrialPlan(n, g.split("/")[0], "craft", {}, None, [1, 2, 3, 4]) for n, g in groups.items()]
    )

    def trainable(config):
        for step in (1, 2, 3, 4):
            tune.report({"phase": "train", "step": float(step)})  # progress without the metric: ignored
            tune.report({"val_cas": values[config["name"]], "step": float(step)})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.25}),
        param_space={"name": tune.grid_search(list(values))},
        tune_config=tune.TuneConfig(scheduler=build_scheduler(spec, plan), max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="asha", verbose=0),
    )
    results = {r.config["name"]: r.metrics["step"] for r in tuner.fit()}
    # the bad trial reached the first rung after the good one had set its cutoff there: stopped;
    # the isic trial is worse still, but only compared with isic trials: it runs out
    assert results == {"good": 4.0, "bad": 1.0, "other-dataset": 4.0}


ASHA_SWEEP = """
import sys, time
from pathlib import Path
from ray import tune
from craft_ray.tune.scheduler import build_scheduler
from craft_ray.tune.space import SweepPlan, TrialPlan
from craft_ray.tune.spec import validate_spec
from craft_ray.tune.trial import SweepContext, run_trial

VALUES = {"a": [0.5] * 4, "b": [0.6] * 4, "c": [0.55, 0.4, 0.4, 0.4], "d": [0.52] * 4}
SPEC = validate_spec(
    {
        "name": "asha",
        "datasets": ["chexpert"],
        "methods": ["craft"],
        "space": {"reward.weights.pathology": [1.0, 2.0]},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    }
)
PLAN = SweepPlan([TrialPlan(n, "chexpert", "craft", {}, None, [1, 2, 3, 4]) for n in VALUES])


def rung(context, name, rung, step, trains, report):  # validation stands in for training
    if name == "b" and step == 3 and context.extra.get("hang"):
        time.sleep(3600)  # the driver is killed here
    return {"val_cas": VALUES[name][step - 1], "step": float(step), "rung": float(rung)}


def trainable(sweep, hang=False):
    context = SweepContext(sweep, {n: {"cfg": {}, "rungs": [1, 2, 3, 4]} for n in VALUES}, {}, {}, {"hang": hang})
    return tune.with_resources(tune.with_parameters(run_trial, context=context, rung_runner=rung), {"cpu": 0.25})


if __name__ == "__main__":
    sweep = sys.argv[1]
    tune.Tuner(
        trainable(sweep, hang=True),
        param_space={"name": tune.grid_search(list(VALUES))},
        tune_config=tune.TuneConfig(
            scheduler=build_scheduler(SPEC, PLAN, sweep), max_concurrent_trials=1, reuse_actors=True
        ),
        run_config=tune.RunConfig(storage_path=sweep, name="tune", verbose=0),
    ).fit()
"""


def tune_saved_status(tune_dir: Path) -> dict[str, str]:
    """Trial name -> status in Tune's newest saved experiment state ({} while none is readable)."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {}
    except ValueError:  # being written
        return {}
    out = {}
    for json_state, _ in data.get("trial_data", []):
        trial = json.loads(json_state)
        out[trial["config"]["name"]] = trial["status"]
    return out


def test_a_killed_and_resumed_sweep_stops_the_same_trials_as_an_uninterrupted_one(ray_local, tmp_path):
    """The sweep's trainable (run_trial: rungs stored, replayed on resume) under Tune with the
    sweep's grouped ASHA, validation standing in for training (known metrics per step). The driver
    is killed during trial b's third rung, then the sweep is restored as `craft sweep` restores it
    (Tuner.restore: the scheduler as it was built, Tune keeps no scheduler state). Uninterrupted,
    ASHA (cutoff: the median of the rung) stops c at step 2 (0.4 < median(0.5, 0.6)) and d at
    step 1 (0.52 < median(0.5, 0.6, 0.55)); resumed, it must too, though a and b's first rungs
    were reported to the dead driver's scheduler (forgotten, c would stop at step 1: 0.55 < 0.6)."""
    from ray import tune

    script = tmp_path / "asha_sweep.py"
    script.write_text(ASHA_SWEEP)
    sweep = tmp_path / "sweep"
    log = tmp_path / "driver.log"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"}  # Tune saves its state at every step
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, str(script), str(sweep)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    started = time.time()
    deadline = started + 240
    # killed once Tune's saved state has a finished and b at its second rung: the restore does
    # not run a again, so only the stored rungs can tell ASHA what a scored
    while not (
        (sweep / "validation" / "b" / "step_000002.json").exists()
        and tune_saved_status(sweep / "tune").get("a") == "TERMINATED"
    ):
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "trial b did not reach its second rung in time"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert sorted(p.name for p in (sweep / "validation").iterdir()) == ["a", "b"]

    # the script's functions, without the script on the workers' path: pickled by value
    trainable = runpy.run_path(str(script), run_name="asha_sweep")["trainable"]
    restored = tune.Tuner.restore(str(sweep / "tune"), trainable(str(sweep)), resume_errored=True)
    stops = {r.config["name"]: r.metrics["step"] for r in restored.fit()}
    assert stops == {"a": 4.0, "b": 4.0, "c": 2.0, "d": 1.0}
