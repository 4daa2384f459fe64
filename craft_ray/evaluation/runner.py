"""`craft evaluate` end to end: check everything, then per run generate -> score -> classify on Ray
Data, assemble, compute the metrics, and compare with the baselines.

All runs of one command share the request (labels, images per label, split, seed, evaluator,
calibration, out-of-family classifier), so they are compared on the same label sets and seeds.
Every input is checked and every output's state decided before any work starts; a finished
evaluation with the same identity (settings, plan and the digests of data, calibration, models
and weights) is reused as it is, one with another is an error naming what changed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from craft_ray.config import EvaluationConfig, ExperimentConfig
from craft_ray.errors import ConfigError, EvaluationError
from craft_ray.evaluation.digests import Digests
from craft_ray.evaluation.generation import SamplerSettings
from craft_ray.evaluation.in_reward import in_reward
from craft_ray.evaluation.pipeline import assemble, build_dataset, plan_resources, read_shards, run_shards
from craft_ray.evaluation.plan import Plan, make_plan
from craft_ray.evaluation.real import RealData
from craft_ray.evaluation.references import (
    References,
    calibration_option,
    evaluation_spec,
    resolve_references,
)
from craft_ray.evaluation.run_metrics import _identity_digest, comparison, dumps, run_metrics
from craft_ray.evaluation.source import ModelSource
from craft_ray.evaluation.store import METRICS, SCORES, EvalStore
from craft_ray.knowledge.labels import get_dataset
from craft_ray.outputs import write_text_atomic

EVAL_DIR = "eval"


class Reporter:
    """What the runner tells its caller: messages and progress bars (the CLI draws them with rich)."""

    def say(self, text: str) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, description: str) -> Iterator[Callable[..., None]]:
        # (done, total[, what is being counted]): calibration names its phase as a third argument
        yield lambda done, total, *what: None


@dataclass
class EvalRequest:
    n_per_label: int | None = None
    split: str | None = None
    seed: int | None = None
    labels: list[str] | None = None
    out: Path | None = None  # the main run's evaluation directory (default <run>/eval)
    overwrite: bool = False
    replace_hint: str = "pass --overwrite to replace it"  # how the user replaces a stale evaluation


@dataclass
class RunResult:
    source: ModelSource
    directory: Path
    metrics: dict[str, Any]
    reused: bool
    scores: pa.Table | None = field(default=None, repr=False)


def effective_config(cfg: ExperimentConfig, request: EvalRequest) -> ExperimentConfig:
    """The main run's config with the command's overrides in its `evaluation` section (validated)."""
    if request.n_per_label is not None and request.n_per_label < 1:
        raise EvaluationError(f"--n-per-label must be at least 1, got {request.n_per_label}")
    overrides = {"n_per_label": request.n_per_label, "split": request.split, "seed": request.seed}
    data = {**cfg.evaluation.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        evaluation = EvaluationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(f"evaluation.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        ) from None
    return cfg.model_copy(update={"evaluation": evaluation})


def check_runs(main: ModelSource, baselines: list[ModelSource], labels: list[str]) -> None:
    spec = get_dataset(main.cfg.dataset.name)
    spec.check_labels(labels, where="--labels")
    for base in baselines:
        if base.cfg.dataset.name != main.cfg.dataset.name:
            raise EvaluationError(
                f"baseline {base.run_dir} is a '{base.cfg.dataset.name}' run but {main.name} is "
                f"'{main.cfg.dataset.name}': runs of different datasets cannot be compared"
            )
    names = [s.name for s in (main, *baselines)]
    if len(set(names)) != len(names):
        raise EvaluationError(f"the same run is given twice: {names}")


def request_identity(
    cfg: ExperimentConfig, labels: list[str], plan: Plan, digests: Digests | None = None
) -> dict[str, Any]:
    """What every run of one command is evaluated with: the settings, the plan (label sets, seeds,
    shards) and the digests of the inputs, so a changed input is never a finished evaluation."""
    ev = cfg.evaluation
    return {
        "dataset": cfg.dataset.name,
        "data": cfg.dataset.uri,
        "labels": labels,
        "n_per_label": ev.n_per_label,
        "split": ev.split,
        "seed": ev.seed,
        "batch_size": ev.batch_size,
        "shard_size": ev.shard_size,
        "evaluator": evaluation_spec(cfg).to_dict(),
        "calibration": calibration_option(cfg),
        "classifier": ev.classifier
        or f"auto:{cfg.dataset.uri}[{cfg.dataset.train_split}] epochs={ev.classifier_epochs}",
        "memorisation_embedding": ev.memorisation_embedding,
        "metrics": {
            "copy_threshold": ev.copy_threshold,
            "copy_quantile": ev.copy_quantile,
            "top_pairs": ev.top_pairs,
            "n_boot": ev.n_boot,
            "ci_level": ev.ci_level,
        },
        "plan": plan.digest(),
        "inputs": input_digests(cfg, digests or Digests()),
    }


def input_digests(cfg: ExperimentConfig, digests: Digests) -> dict[str, Any]:
    """Digests of the data, the calibration file and the evaluator and classifier models (a cached
    calibration or classifier that the evaluation makes itself follows from the data)."""
    ev, spec = cfg.evaluation, evaluation_spec(cfg)
    option = calibration_option(cfg)
    if not option.startswith("auto:") and not Path(option).is_file():
        raise EvaluationError(f"calibration file not found: {option}")
    return {
        "data": digests.dataset(cfg.dataset.uri),
        "calibration": None if option.startswith("auto:") else digests.file(option),
        "vlm": digests.model(spec.vlm, "vlm"),
        "mllm": digests.model(spec.mllm, "mllm"),
        "classifier": digests.model(ev.classifier, "classifier"),
    }


def sampler_for(source: ModelSource, ev: EvaluationConfig) -> SamplerSettings:
    t = source.cfg.training
    return SamplerSettings(
        ev.sampler_steps or t.sampler_steps,
        ev.guidance_scale if ev.guidance_scale is not None else t.guidance_scale,
        ev.eta if ev.eta is not None else t.eta,
        ev.weight_dtype,
    )


@dataclass
class Job:
    source: ModelSource
    store: EvalStore
    identity: dict[str, Any]
    state: str


def plan_jobs(
    main: ModelSource,
    baselines: list[ModelSource],
    cfg: ExperimentConfig,
    labels: list[str],
    request: EvalRequest,
    plan: Plan,
    digests: Digests | None = None,
) -> list[Job]:
    digests = digests or Digests()
    shared = request_identity(cfg, labels, plan, digests)
    jobs = []
    for k, source in enumerate((main, *baselines)):
        if k == 0 and request.out is not None:
            directory = Path(request.out)
        elif source.run_dir is not None:
            directory = Path(source.run_dir) / EVAL_DIR
        else:
            raise EvaluationError(
                "--method pretrained needs --out DIR (there is no run directory to write into)"
            )
        identity = {
            **shared,
            "model": source.name,
            "base": digests.model(source.cfg.model.base, "diffusion", source.cfg.model.revision),
            "weights": source.weights_digest(),
            "sampler": sampler_for(source, cfg.evaluation).identity(),
        }
        store = EvalStore(directory)
        jobs.append(
            Job(source, store, identity, store.state(identity, request.overwrite, request.replace_hint))
        )
    return jobs


def evaluation_plan(cfg: ExperimentConfig, labels: list[str], real: RealData) -> Plan:
    ev = cfg.evaluation
    return make_plan(real.label_sets(), labels, ev.n_per_label, ev.seed, ev.shard_size, ev.batch_size)


def evaluate(
    main: ModelSource,
    baselines: list[ModelSource] | None = None,
    request: EvalRequest | None = None,
    reporter: Reporter | None = None,
) -> list[RunResult]:
    """Evaluate `main` and each baseline (the same request), then compare main with each baseline."""
    baselines, request, reporter = list(baselines or []), request or EvalRequest(), reporter or Reporter()
    cfg = effective_config(main.cfg, request)
    labels = list(request.labels or cfg.evaluation.labels or cfg.dataset.label_space)
    check_runs(main, baselines, labels)
    real = RealData(cfg, labels, cfg.evaluation.split)
    plan = evaluation_plan(cfg, labels, real)
    jobs = plan_jobs(main, baselines, cfg, labels, request, plan)
    results: dict[str, RunResult] = {}
    pending = [job for job in jobs if job.state != "complete"]
    if pending:
        from craft_ray.raycluster import ensure_ray

        reporter.say(ensure_ray())
        refs = resolve_references(cfg, labels, jobs[0].store, reporter.progress)
        reporter.say(f"calibration: {refs.calibration_note}")
        reporter.say(f"out-of-family evaluator: {refs.classifier_note}")
        for note in plan.notes:
            reporter.say(note)
        for job in pending:
            results[job.source.name] = run_job(job, cfg, labels, plan, refs, real, reporter)
    for job in jobs:
        if job.source.name not in results:
            reporter.say(f"{job.source.name}: reusing the finished evaluation in {job.store.final}")
            results[job.source.name] = load_result(job)
    main_result = results[main.name]
    for base in baselines:
        add_comparison(main_result, results[base.name], cfg, labels)
    return [results[s.name] for s in (main, *baselines)]


def run_job(
    job: Job,
    cfg: ExperimentConfig,
    labels: list[str],
    plan: Plan,
    refs: References,
    real: RealData,
    reporter: Reporter,
) -> RunResult:
    source, store = job.source, job.store
    settings = {
        "identity": job.identity,
        "source": {
            "name": source.name,
            "method": source.method,
            "run_dir": source.run_dir,
            "step": source.step,
        },
        "calibration": refs.calibration_note,
        "classifier": refs.classifier_note,
        "plan_notes": plan.notes,
    }
    work = store.start(settings, fresh=job.state == "new")
    refs.save(work)
    store.check_shards(plan.digest())
    todo = [s for s in range(plan.n_shards) if s not in store.done_shards()]
    if todo:
        import ray

        resources = plan_resources(cfg.evaluation, ray.cluster_resources())
        dataset = build_dataset(
            source,
            sampler_for(source, cfg.evaluation),
            plan,
            todo,
            refs.calibration,
            refs.classifier,
            cfg.evaluation.memorisation_embedding,
            resources,
        )
        with reporter.progress(f"{source.name}: generate + score") as update:
            run_shards(store, plan, dataset, todo, update)
    else:
        reporter.say(f"{source.name}: all {plan.n_shards} shard(s) already written")
    scores = assemble(store, plan, source, labels, refs.classifier.labels)
    with reporter.progress(f"{source.name}: metrics") as update:
        metrics = run_metrics(
            read_shards(store, plan), scores, cfg, labels, refs, real, store.partial, update
        )
    metrics["in_reward"] = in_reward(source.cfg, refs.calibration.evaluator)
    write_text_atomic(store.partial / METRICS, dumps(metrics))
    final = store.promote()
    return RunResult(source, final, metrics, reused=False, scores=scores)


def load_result(job: Job) -> RunResult:
    directory = job.store.final
    metrics = json.loads((directory / METRICS).read_text())
    return RunResult(job.source, directory, metrics, reused=True, scores=pq.read_table(directory / SCORES))


def add_comparison(main: RunResult, base: RunResult, cfg: ExperimentConfig, labels: list[str]) -> None:
    """The main run's tail reduction vs a baseline, added to its metrics.json (never replacing another)."""
    key = base.source.name
    existing = main.metrics.setdefault("baselines", {})
    if key in existing and existing[key].get("baseline_eval") == _identity_digest(base.directory):
        return
    existing[key] = comparison(main, base, cfg, labels)
    write_text_atomic(main.directory / METRICS, dumps(main.metrics))
