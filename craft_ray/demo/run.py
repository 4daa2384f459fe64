"""`craft demo`: the offline main job, end to end on a local Ray cluster.

Per seed: phantom data (seed 0, shared by every seed), the CAS calibration on its real val split,
each experiment of `experiments/demo/` trained from the experiments' `model.base` on Ray Train (the reward is
the shipped VLM), all of them evaluated with the evaluation runner (the same label sets and image
seeds for every method; the out-of-family classifier is the shipped CNN), a report (`craft
report`: tables, figures, sample grids) and the headline table. With several seeds, a summary of
mean ± sd per method over the seeds.

Re-running continues: existing data and calibration are reused (while they are what the demo asks
for: data of other options, or a calibration whose data or evaluator weights changed, is an error),
unfinished runs resume from their last checkpoint, finished runs are not retrained and finished
evaluations are reused (an evaluation is identified by the digests of its inputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from craft_ray.cas import Calibration, calibrate
from craft_ray.cas.score import EvaluatorSpec
from craft_ray.config import ExperimentConfig
from craft_ray.data import read_manifest
from craft_ray.data.phantoms import make_phantom_dataset
from craft_ray.data.schema import MANIFEST_NAME, Manifest
from craft_ray.demo.datasets import check_shipped_models
from craft_ray.demo.experiments import DEMO_EXPERIMENTS, DemoExperiment, DemoLayout, load_experiments
from craft_ray.demo.summary import aggregate, method_row, seed_differences, strict_json, verdict_counts
from craft_ray.errors import ConfigError
from craft_ray.evaluation import EvalRequest, Reporter, RunResult, evaluate, open_run
from craft_ray.evaluation.digests import Digests
from craft_ray.evaluation.in_reward import in_reward
from craft_ray.evaluation.paired import RunScores, paired_comparison, pool_comparisons
from craft_ray.evaluation.references import evaluation_spec
from craft_ray.evaluation.run_metrics import oof_spec, real_scores
from craft_ray.evaluation.store import CALIBRATION, SCORES
from craft_ray.knowledge.labels import get_dataset
from craft_ray.outputs import write_text_atomic
from craft_ray.train.checkpoint import read_model_card
from craft_ray.train.methods import get_method
from craft_ray.train.trainer import FINAL_NAME, run_exists, run_training

DATA_SEED = 0  # the demo's phantoms (see the model cards' seed plan)
# Implausible (artefact) images go into the fine-tuning data only, as real training data has
# artefacts; the held-out splits (thresholds, label sets, downstream test) stay the clean reference.
IMPLAUSIBLE_SPLITS = ("train",)


@dataclass
class DemoOptions:
    out: Path
    experiments: Path = DEMO_EXPERIMENTS
    n: int = 1000  # phantom images of the dataset (train / val / test by the generator's fractions)
    size: int = 64
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config keys for every experiment
    implausible: float = 0.2  # share of training images with one hallucination-like defect each


@dataclass
class SeedResult:
    seed: int
    rows: dict[str, dict[str, float]]  # method -> headline numbers
    results: list[RunResult]
    report: Path
    summary: Path
    differences: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # baseline method -> stat
    in_reward: dict[str, bool] = field(default_factory=dict)  # method -> its CAS is in-reward


def _scores(result: RunResult):
    return result.scores if result.scores is not None else pq.read_table(result.directory / SCORES)


def pooled_differences(results: list[SeedResult], baseline: str) -> dict[str, dict[str, Any]]:
    """The main method - `baseline` over all seeds: the mean of the per-seed paired differences with
    a CI from pooled bootstrap replicates (seeds are independent experiments)."""
    comparisons = []
    for r in results:
        main = r.results[0]
        base = next(x for x in r.results if x.source.method == baseline)
        calibration = Calibration.load(main.directory / CALIBRATION)
        comparisons.append(
            paired_comparison(
                RunScores.from_table(_scores(main)),
                RunScores.from_table(_scores(base)),
                main.metrics["labels"],
                main.metrics["thresholds"],
                real_scores(calibration),
                oof_spec(main.metrics),
                main.source.cfg.evaluation.n_boot,
                main.metrics.get("ci_level", 0.95),
                r.seed,
                keep_replicates=True,
            )
        )
    return pool_comparisons(comparisons, results[0].results[0].metrics.get("ci_level", 0.95))


def ensure_data(cfg: ExperimentConfig, opts: DemoOptions, reporter: Reporter) -> Manifest:
    """The demo's phantoms: made once, reused while they are what this demo asks for (a dataset
    made with other options, e.g. another --n, is an error, never silently used)."""
    target = Path(cfg.dataset.uri)
    modality = get_dataset(cfg.dataset.name).modality
    if (target / MANIFEST_NAME).exists():
        manifest = read_manifest(str(target))
        made = {"origin": manifest.origin, "modality": manifest.modality, **manifest.options}
        wanted = {
            "origin": "phantom",
            "modality": modality,
            "n": opts.n,
            "size": opts.size,
            "seed": DATA_SEED,
            "implausible": opts.implausible or None,
            "implausible_splits": sorted(IMPLAUSIBLE_SPLITS) if opts.implausible else None,
        }
        changed = [f"{k} {made.get(k)!r} (this demo: {v!r})" for k, v in wanted.items() if made.get(k) != v]
        if changed:
            raise ConfigError(
                f"{target} holds data made with other options: {', '.join(changed)}; "
                "use a new --out, or the options it was made with"
            )
        reporter.say(f"data: reusing {target}")
        return manifest
    with reporter.progress(f"phantom {modality} images") as update:
        return make_phantom_dataset(
            modality,
            opts.n,
            target,
            opts.size,
            DATA_SEED,
            progress=update,
            implausible=opts.implausible,
            implausible_splits=IMPLAUSIBLE_SPLITS,
        )


def calibration_inputs(cfg: ExperimentConfig, spec: EvaluatorSpec) -> dict[str, Any]:
    """Digests of what a calibration is computed from: the real data and the evaluator's models."""
    digests = Digests()
    return {
        "data": digests.dataset(cfg.dataset.uri),
        "vlm": digests.model(spec.vlm, "vlm"),
        "mllm": digests.model(spec.mllm, "mllm"),
    }


def inputs_path(path: Path) -> Path:
    return path.with_name(path.stem + ".inputs.json")


def ensure_calibrations(cfg: ExperimentConfig, reporter: Reporter) -> None:
    """The real-image calibrations: the reward's (its VLM's realism reference) and the evaluation's
    (thresholds and reference of the independent evaluator). Beside each (`<name>.inputs.json`) the
    digests of the data and models it was made from: a calibration is reused only while its
    evaluator, data and model weights are the same."""
    roles = (
        ("reward", cfg.reward.calibration, EvaluatorSpec.from_config(cfg)),
        ("evaluation", cfg.evaluation.calibration, evaluation_spec(cfg)),
    )
    for role, where, spec in roles:
        path = Path(where or "")
        inputs = calibration_inputs(cfg, spec)
        if path.is_file():
            if Calibration.load(path).evaluator != spec:
                raise_stale(
                    path,
                    "another evaluator than the demo's experiments now name (weights, VLM or labels)",
                )
            recorded = read_json_file(inputs_path(path))
            changed = [k for k in inputs if recorded.get(k) != inputs[k]]
            if changed:
                what = {
                    "data": "the data (regenerated since)",
                    "vlm": "the VLM's weights",
                    "mllm": "the MLLM",
                }
                raise_stale(
                    path,
                    "other inputs: " + ", ".join(what[k] for k in changed)
                    if recorded
                    else "inputs it does not record",
                )
            reporter.say(f"{role} calibration: reusing {path}")
            continue
        with reporter.progress(
            f"calibrating the {role} CAS ({spec.vlm}) on real {cfg.dataset.val_split} images"
        ) as update:
            calibration = calibrate(spec, cfg.dataset.uri, cfg.dataset.val_split, progress=update)
        path.parent.mkdir(parents=True, exist_ok=True)
        calibration.save(path)
        write_text_atomic(inputs_path(path), json.dumps(inputs, indent=1) + "\n")


def read_json_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def raise_stale(path: Path, why: str) -> None:
    raise ConfigError(
        f"{path} was calibrated with {why}; the runs trained with it and their evaluations "
        "belong to it: use a new --out, or remove that file"
    )


def finished_step(run_dir: Path) -> int | None:
    final = run_dir / FINAL_NAME
    if not (final / "model.json").is_file():
        return None
    return int(read_model_card(final).get("step", -1))


def ensure_trained(exp: DemoExperiment, reporter: Reporter) -> Path:
    """Train the experiment (or continue it); a run whose final/ is at the configured step is kept."""
    cfg = exp.cfg
    run_dir = Path(cfg.storage_uri()) / cfg.run_name
    steps = cfg.training.steps
    done = finished_step(run_dir)
    # a method without an adapter (pretrained) trains nothing: its final checkpoint is step 0
    untrained = get_method(cfg.method).adapter is None
    if done == steps or (done is not None and untrained):
        reporter.say(f"{cfg.run_name}: trained ({steps} steps), reusing {run_dir}")
        return run_dir
    resume = run_exists(str(run_dir))
    workers = f"{cfg.scaling.workers} Ray Train worker(s)"
    if untrained:
        reporter.say(f"{cfg.run_name}: checkpointing the base as it is ({cfg.method}) on {workers}")
        run_training(cfg, resume=resume)
        return run_dir
    verb = "continuing" if resume else "training"
    start = f", starting from {Path(cfg.model.init_lora).name}'s LoRA" if cfg.model.init_lora else ""
    reporter.say(f"{cfg.run_name}: {verb} {cfg.method} for {steps} steps on {workers}{start}")
    every = max(1, steps // 10)

    def on_report(metrics: dict[str, Any]) -> None:
        step = int(metrics.get("step", 0))
        if step % every and step != steps:
            return
        shown = {k: metrics[k] for k in ("loss", "reward", "denoise_loss") if k in metrics}
        reporter.say(
            f"  {cfg.run_name} step {step}/{steps}: " + " ".join(f"{k}={v:.4f}" for k, v in shown.items())
        )

    run_training(cfg, resume=resume, on_report=on_report)
    return run_dir


def run_seed(opts: DemoOptions, seed: int, reporter: Reporter) -> SeedResult:
    """One seed of the demo: data, calibration, training, evaluation, report, table."""
    from craft_ray.report.build import build_report

    layout = DemoLayout(opts.out)
    experiments = load_experiments(opts.experiments, layout, seed, opts.overrides)
    main_cfg = next(e.cfg for e in experiments if e.evaluated)
    ensure_data(main_cfg, opts, reporter)
    ensure_calibrations(main_cfg, reporter)
    trained = [(exp, ensure_trained(exp, reporter)) for exp in experiments]  # warm starts come first
    experiments = [exp for exp, _ in trained if exp.evaluated]
    run_dirs = [run_dir for exp, run_dir in trained if exp.evaluated]
    sources = [open_run(d) for d in run_dirs]
    # craft demo has no --overwrite: a stale evaluation's error says what a demo user does instead
    hint = "remove that eval directory to evaluate the run again (its training is kept), or use a new --out"
    results = evaluate(sources[0], sources[1:], EvalRequest(replace_hint=hint), reporter)
    with reporter.progress("report (tables, figures, sample grids)") as update:
        report = build_report(run_dirs, layout.report(seed), overwrite=True)
        update(1, 1)
    rows = {exp.method: method_row(result.metrics) for exp, result in zip(experiments, results, strict=True)}
    method_of = {result.source.name: result.source.method for result in results}
    differences = {method_of[name]: diff for name, diff in seed_differences(results[0].metrics).items()}
    in_reward = {
        exp.method: bool(result.metrics.get("in_reward", {}).get("cas"))
        for exp, result in zip(experiments, results, strict=True)
    }
    record = {
        "seed": seed,
        "rows": rows,
        "differences": differences,
        "in_reward": in_reward,
        "runs": [str(d) for d in run_dirs],
    }
    summary = write_text_atomic(
        layout.summary(seed), json.dumps(strict_json(record), indent=1, allow_nan=False) + "\n"
    )
    return SeedResult(seed, rows, results, report, summary, differences, in_reward)


def run_demo(
    opts: DemoOptions,
    seeds: list[int] | None = None,
    reporter: Reporter | None = None,
    address: str | None = None,
) -> tuple[list[SeedResult], dict[str, Any]]:
    """Every seed in turn on one Ray cluster (`address`, RAY_ADDRESS, else a local one), then the
    summary over seeds (also written to `<out>/summary.json`)."""
    from craft_ray.raycluster import ensure_ray

    reporter = reporter or Reporter()
    seeds = seeds or [0]
    in_reward_cas: dict[str, str] = {}
    for seed in seeds:  # every experiment config, and the shipped models it names, checked before any work
        for exp in load_experiments(opts.experiments, DemoLayout(opts.out), seed, opts.overrides):
            check_shipped_models(exp.cfg)
            evaluator = evaluation_spec(exp.cfg)
            if exp.evaluated and in_reward(exp.cfg, evaluator)["cas"]:
                in_reward_cas[exp.method] = evaluator.vlm
    if in_reward_cas:  # allowed (and marked in every table), but said before hours of work, not after
        reporter.say(
            f"warning: the CAS and tail of {', '.join(in_reward_cas)} will be in-reward: the evaluator "
            f"{', '.join(sorted(set(in_reward_cas.values())))} is the VLM they are trained to maximise "
            "(name an independent evaluator: evaluation.vlm=phantom-eval)"
        )
    reporter.say(ensure_ray(address))
    results = []
    for seed in seeds:
        reporter.say(f"== seed {seed} ==")
        results.append(run_seed(opts, seed, reporter))
    per_seed = {r.seed: r.rows for r in results}
    methods = list(results[0].rows)
    differences = {r.seed: r.differences for r in results}
    summary = {
        "dataset": results[0].results[0].source.cfg.dataset.name,
        "main": methods[0],
        "seeds": seeds,
        "per_seed": per_seed,
        "methods": aggregate(per_seed),
        "differences": differences,
        "verdicts": {base: verdict_counts(differences, base) for base in methods[1:]},
        "pooled": {base: pooled_differences(results, base) for base in methods[1:]},
        "in_reward": results[0].in_reward,
        "experiments": str(opts.experiments),
        "overrides": opts.overrides,
    }
    write_text_atomic(
        opts.out / "summary.json", json.dumps(strict_json(summary), indent=1, allow_nan=False) + "\n"
    )
    return results, summary
