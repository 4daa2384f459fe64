"""Evaluation throughput: the Ray Data pipeline (generate -> CAS score -> out-of-family CNN, three
actor pools) vs a plain Python loop over the same stage objects in one process, on one node.

python benchmarks/bench_eval.py [--n 64] [--base tiny] [--resolution 64] [--steps 20] [--batch 8]
                                [--repeats 2] [--gen-threads 2] [--json out.json]

Both sides include building the models (the pipeline's actors build theirs when they start) and
run the same plan (label sets, seeds, batches). Runs alternate (loop, Ray, loop, Ray, ...) and the
best of each is reported, so load from other processes hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, report  # noqa: E402

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def setup(args, work: Path):
    from craft_ray.cas.calibration import calibrate
    from craft_ray.config import validate_config
    from craft_ray.data.phantoms import make_phantom_dataset
    from craft_ray.evaluation.plan import make_plan
    from craft_ray.evaluation.references import evaluation_spec
    from craft_ray.evaluation.runner import sampler_for
    from craft_ray.evaluation.source import ModelSource
    from craft_ray.models.classifier import train_classifier

    data = work / "chest"
    make_phantom_dataset("chest", 120, data, size=args.resolution, seed=0)
    cfg = validate_config(
        {
            "name": "bench-eval",
            "method": "pretrained",
            "dataset": {
                "name": "chexpert",
                "uri": str(data),
                "resolution": args.resolution,
                "labels": LABELS,
            },
            "model": {"base": args.base},
            "training": {"sampler_steps": args.steps},
            "evaluation": {"batch_size": args.batch, "shard_size": args.batch * 4},
        }
    ).resolved()
    source = ModelSource(cfg, f"pretrained:{args.base}", "pretrained", None, None, None, None)
    calibration = calibrate(evaluation_spec(cfg), str(data), "val")
    classifier = train_classifier(str(data), "train", LABELS, epochs=2)
    per_label = -(-args.n // len(LABELS))
    labels = [["Cardiomegaly"], ["Pleural Effusion", "Support Devices"], ["No Finding"]] * 10
    plan = make_plan(labels, LABELS, per_label, 0, cfg.evaluation.shard_size, args.batch)
    return cfg, source, sampler_for(source, cfg.evaluation), plan, calibration, classifier


def plain_loop(source, sampler, plan, calibration, classifier, gen_threads: int) -> int:
    """The same three stages, called one after another in this process."""
    import pyarrow as pa
    import torch

    from craft_ray.evaluation.pipeline import group_items, stage_payloads
    from craft_ray.evaluation.stages import ClassifyStage, GenerateStage, ScoreStage

    torch.set_num_threads(gen_threads)
    payloads = stage_payloads(source, sampler, calibration, classifier, "pixels")
    generate = GenerateStage(payloads["generate"], gen_threads)
    score = ScoreStage(payloads["score"], gen_threads)
    classify = ClassifyStage(payloads["classify"], gen_threads)
    done = 0
    for item in group_items(plan, list(range(plan.n_shards))):
        table = classify(score(generate(pa.Table.from_pylist([item]))))
        done += table.num_rows
    return done


def ray_pipeline(source, sampler, plan, calibration, classifier, cfg) -> int:
    import ray

    from craft_ray.evaluation.pipeline import build_dataset, plan_resources

    resources = plan_resources(cfg.evaluation, ray.cluster_resources())
    ds = build_dataset(
        source, sampler, plan, list(range(plan.n_shards)), calibration, classifier, "pixels", resources
    )
    return sum(batch.num_rows for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=64, help="images (rounded up to a multiple of 6 labels)")
    parser.add_argument("--base", default="tiny")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gen-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import logging

    import ray

    from craft_ray.config import StageResources

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray-bench-eval-"))
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        cfg, source, sampler, plan, calibration, classifier = setup(args, Path(tmp))
        cfg.evaluation.generate = StageResources(num_cpus=args.gen_threads)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        times: dict[str, list[float]] = {"plain loop": [], "Ray Data": []}
        n = len(plan.rows)
        for _ in range(args.repeats):
            for name, run in (
                (
                    "plain loop",
                    lambda: plain_loop(source, sampler, plan, calibration, classifier, args.gen_threads),
                ),
                ("Ray Data", lambda: ray_pipeline(source, sampler, plan, calibration, classifier, cfg)),
            ):
                start = time.perf_counter()
                done = run()
                times[name].append(time.perf_counter() - start)
                assert done == n, (name, done, n)
        ray.shutdown()
    base = min(times["plain loop"])
    rows = [
        [name, n, min(t), n / min(t), base / min(t), " ".join(f"{x:.1f}" for x in t)]
        for name, t in times.items()
    ]
    title = (
        f"evaluation throughput: {args.base} UNet, {args.resolution} px, T={args.steps}, batch {args.batch}, "
        f"generation threads {args.gen_threads}"
    )
    report(title, ["pipeline", "images", "best s", "images/s", "ratio", "all runs s"], rows, args.json)
    print(machine())


if __name__ == "__main__":
    main()
