"""Ray Tune bookkeeping of `craft sweep`: seconds per trial beyond its own work, and sweep wall time
vs the sum of the trials' work at max_concurrent_trials 1 and 2, in one run.

python benchmarks/bench_tune.py [--trials 4] [--steps 2] [--resolution 16] [--cpus 4] [--json out.json]

The sweep is `craft sweep`'s own code (`craft_ray.tune.run_sweep`) on a local Ray cluster: one
dataset (phantom chest), CRAFT with tiny models, `--trials` reward weights, FIFO (no early stopping),
one validation per trial. A trial's work is what it measures itself: its training run
(`run_training`, a Ray Train run) plus its validation task. With one trial at a time the rest of
the sweep's wall time, divided by the trials, is Tune's bookkeeping per trial (trial actors,
placement groups, results, experiment-state syncing, the sweep's own files). The per-dataset
calibration runs before Tune starts and is reported apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_spec(work: Path, data: Path, args, concurrent: int) -> Path:
    spec = {
        "name": f"bench-c{concurrent}",
        "experiments": str(REPO / "experiments" / "{dataset}" / "{method}.yaml"),
        "datasets": ["chexpert"],
        "methods": ["craft"],
        "overrides": {
            "model.base": "tiny",
            "model.vlm": "tiny",
            "dataset.uri": str(data),
            "dataset.resolution": args.resolution,
            "training.steps": args.steps,
            "training.sampler_steps": 2,
            "training.batch_size": 2,
            "training.checkpoint_every": args.steps,
            "training.report_every": args.steps,
        },
        "space": {"reward.weights.pathology": {"grid": [float(i + 1) for i in range(args.trials)]}},
        "scheduler": {"type": "fifo"},
        "validation": {"n_per_label": 2},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "max_concurrent_trials": concurrent,
    }
    path = work / f"spec-c{concurrent}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(work: Path, data: Path, args, concurrent: int) -> list:
    from craft_ray.tune import run_sweep

    result = run_sweep(write_spec(work, data, args, concurrent), str(work / "sweeps"), say=lambda _: None)
    rows = result.table.to_pylist()
    if {r["status"] for r in rows} != {"completed"}:
        raise SystemExit(f"sweep did not complete: {[(r['trial'], r['status'], r['error']) for r in rows]}")
    train = sum(r["train_s"] for r in rows)
    validate = sum(r["validate_s"] for r in rows)
    wall = result.timings["tune"]
    overhead = (wall - train - validate) / len(rows) if concurrent == 1 else float("nan")
    return [
        concurrent,
        len(rows),
        result.timings["calibrate"],
        train,
        validate,
        wall,
        wall / (train + validate),
        overhead,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray cluster")
    parser.add_argument("--json")
    args = parser.parse_args()

    import ray

    from craft_ray.data.phantoms import make_phantom_dataset

    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = Path(tmp)
        data = work / "chest"
        make_phantom_dataset("chest", 60, data, size=32, seed=0)
        ray.init(
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            rows = [run(work, data, args, concurrent) for concurrent in (1, 2)]
        finally:
            ray.shutdown()
    report(
        f"craft sweep: Tune bookkeeping ({args.trials} CRAFT trials, {args.steps} steps, "
        f"{args.resolution} px, tiny models)",
        [
            "max concurrent",
            "trials",
            "calibration s",
            "sum train s",
            "sum validate s",
            "sweep wall s",
            "wall / sum of work",
            "Tune overhead s / trial",
        ],
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()
