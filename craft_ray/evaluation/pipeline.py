"""The Ray Data pipeline of one evaluation: generate -> score -> classify, written shard by shard.

Pending shards become groups of `batch_size` plan rows (one Ray Data row per group, so an image is
always generated in the same batch); three actor pools (`map_batches` with callable classes,
`ActorPoolStrategy(size=n)`, GPUs when the cluster has them) transform them; the driver gathers
the finished rows by shard and writes each complete shard atomically, so an interrupted evaluation
keeps its finished shards and a rerun generates only the rest.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from craft_ray.cas.calibration import Calibration
from craft_ray.config import EvaluationConfig
from craft_ray.data.schema import ImageRecord
from craft_ray.data.writer import DatasetWriter
from craft_ray.evaluation.generation import SamplerSettings
from craft_ray.evaluation.plan import Plan
from craft_ray.evaluation.source import ModelSource
from craft_ray.evaluation.stages import ClassifyStage, GenerateStage, ScoreStage
from craft_ray.evaluation.store import IMAGES, PLAN_KEY, SCORES, EvalStore
from craft_ray.knowledge.labels import get_dataset
from craft_ray.models.classifier import Classifier
from craft_ray.outputs import atomic_file

ProgressFn = Callable[[int, int], None]
GPU_SHARE = {"generate": 0.5, "score": 0.25, "classify": 0.25}  # of one GPU per actor, by default
GENERATED_SPLIT = "generated"


@dataclass(frozen=True)
class StagePlan:
    actors: int
    num_cpus: float  # what is asked of Ray (scaled down to fit a small cluster)
    num_gpus: float
    threads: int  # torch threads in the actor (the configured CPUs)


def plan_resources(ev: EvaluationConfig, cluster: dict[str, float]) -> dict[str, StagePlan]:
    """Actor pools per stage. With GPUs: one actor per GPU per stage, sharing each GPU
    (0.5 / 0.25 / 0.25) unless configured. CPU requests are scaled down together when the pools
    would not fit the cluster's CPUs (a laptop), so every pool can start."""
    gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
    raw = {}
    for stage in GPU_SHARE:
        r = getattr(ev, stage)
        actors = r.actors or (max(1, int(gpus)) if gpus else 1)
        num_gpus = r.num_gpus if r.num_gpus is not None else (GPU_SHARE[stage] if gpus else 0.0)
        raw[stage] = (actors, r.num_cpus, num_gpus)
    wanted = sum(a * c for a, c, _ in raw.values())
    scale = min(1.0, 0.95 * cpus / wanted) if wanted > 0 else 1.0
    return {
        stage: StagePlan(actors, round(c * scale, 3), g, max(1, math.floor(c)))
        for stage, (actors, c, g) in raw.items()
    }


def build_dataset(
    source: ModelSource,
    sampler: SamplerSettings,
    plan: Plan,
    shards: list[int],
    calibration: Calibration,
    classifier: Classifier,
    embedding: str,
    resources: dict[str, StagePlan],
):
    """The lazy Ray Dataset of the pending shards' scored rows."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller draws one bar for the whole pipeline
    context.print_on_execution_start = False
    items = group_items(plan, shards)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    payloads = stage_payloads(source, sampler, calibration, classifier, embedding)
    stages = [
        ("generate", GenerateStage, 1),
        ("score", ScoreStage, plan.batch_size),
        ("classify", ClassifyStage, plan.batch_size),
    ]
    for name, stage, batch_size in stages:
        res = resources[name]
        ds = ds.map_batches(
            stage,
            batch_size=batch_size,
            batch_format="pyarrow",
            fn_constructor_kwargs={"payload": [ray.put(payloads[name])], "num_threads": res.threads},
            compute=ray.data.ActorPoolStrategy(size=res.actors),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
        )
    return ds


def stage_payloads(
    source: ModelSource,
    sampler: SamplerSettings,
    calibration: Calibration,
    classifier: Classifier,
    embedding: str,
) -> dict[str, dict[str, Any]]:
    """Constructor arguments of the three stages. In the pipeline they go to the object store once
    and travel by reference (the actors fetch them; the driver holds the references meanwhile)."""
    from dataclasses import asdict

    card, weights = classifier.to_bytes()
    return {
        "generate": {"source": source.to_dict(), "sampler": sampler.__dict__},
        "score": {"calibration": asdict(calibration), "embedding": embedding},
        "classify": {"card": card, "weights": weights},
    }


def group_items(plan: Plan, shards: list[int]) -> list[dict[str, Any]]:
    """One item per generation group (its rows as JSON)."""
    return [
        {"group": i, "rows": json.dumps([r.as_dict() for r in g])} for i, g in enumerate(plan.groups(shards))
    ]


def run_shards(
    store: EvalStore,
    plan: Plan,
    dataset,
    shards: list[int],
    progress: ProgressFn | None = None,
) -> None:
    """Drive the dataset; write every shard when its last row arrives."""
    expected = {s: len(plan.shard_rows(s)) for s in shards}
    total, done = len(plan.rows), len(plan.rows) - sum(expected.values())
    buffers: dict[int, list[pa.Table]] = defaultdict(list)
    counts: dict[int, int] = defaultdict(int)
    digest = plan.digest()
    if progress:
        progress(done, total)
    for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for shard in pc.unique(table.column("shard")).to_pylist():
            part = table.filter(pc.equal(table.column("shard"), shard))
            buffers[shard].append(part)
            counts[shard] += part.num_rows
            done += part.num_rows
            if counts[shard] == expected[shard]:
                rows = pa.concat_tables(buffers.pop(shard))
                rows = rows.replace_schema_metadata({**(rows.schema.metadata or {}), PLAN_KEY: digest})
                with atomic_file(store.shard_path(shard)) as tmp:
                    pq.write_table(rows, tmp, compression="zstd")
        if progress:
            progress(done, total)
    missing = sorted(set(shards) - store.done_shards())
    if missing:
        raise RuntimeError(f"evaluation pipeline ended with shard(s) {missing} incomplete")


def read_shards(store: EvalStore, plan: Plan) -> pa.Table:
    tables = [pq.read_table(store.shard_path(s)) for s in range(plan.n_shards)]
    return pa.concat_tables(tables).sort_by("index")


def assemble(
    store: EvalStore, plan: Plan, source: ModelSource, labels: list[str], oof_labels: list[str]
) -> pa.Table:
    """scores.parquet (no image bytes) and images/ (a canonical dataset) in the partial directory."""
    import shutil

    table = read_shards(store, plan)
    scores = table.drop(["image", "shard"]).replace_schema_metadata(
        {"craft_ray.oof_labels": json.dumps(oof_labels), "craft_ray.source": source.name}
    )
    with atomic_file(store.partial / SCORES) as tmp:
        pq.write_table(scores, tmp)
    images_dir = store.partial / IMAGES
    shutil.rmtree(images_dir, ignore_errors=True)
    write_images(images_dir, table, source, labels)
    return scores


def write_images(out: Path, table: pa.Table, source: ModelSource, labels: list[str]) -> None:
    spec = get_dataset(source.cfg.dataset.name)
    side = source.cfg.dataset.resolution
    with DatasetWriter(out, spec.name, spec.modality, list(labels)) as writer:
        for row in table.select(
            ["image_id", "labels", "image", "seed", "prompt", "target_label"]
        ).to_pylist():
            writer.add(
                ImageRecord(
                    image_id=row["image_id"],
                    patient_id=row["image_id"],
                    split=GENERATED_SPLIT,
                    dataset=spec.name,
                    modality=spec.modality,
                    labels=row["labels"],
                    image=row["image"],
                    width=side,
                    height=side,
                    source=f"generated:{source.name}",
                    attributes={
                        "seed": row["seed"],
                        "prompt": row["prompt"],
                        "target_label": row["target_label"],
                    },
                )
            )
        writer.close("generated", {"model": source.name, "method": source.method, "run": source.run_dir})
