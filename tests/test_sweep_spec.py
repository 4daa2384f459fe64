"""Sweep specs without Ray: validation errors, which trials a spec makes, the shipped specs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from craft_ray.errors import ConfigError
from craft_ray.tune.plan import plan_sweep
from craft_ray.tune.space import points, trial_name
from craft_ray.tune.spec import load_spec, validate_spec

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = str(REPO / "experiments" / "{dataset}" / "{method}.yaml")


def write_spec(tmp_path: Path, **fields) -> Path:
    data = {
        "name": "t",
        "experiments": EXPERIMENTS,
        "datasets": ["chexpert"],
        "methods": ["craft"],
        "space": {"reward.weights.pathology": {"grid": [1.0, 2.0]}},
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def plan(path: Path):
    return plan_sweep(load_spec(path), path, str(path.parent / "sweep"), with_data=False)


def test_trials_per_method_follow_what_each_method_reads(tmp_path):
    path = write_spec(
        tmp_path,
        methods=[
            "craft",
            "ddpo",
            "lora_sft",
            "pretrained",
            "craft_no_checklist",
            {"name": "craft_no_lambda", "keep": ["training.denoise_weight"]},
        ],
        space={
            "reward.weights.pathology": [1.0, 2.0],
            "reward.weights.checklist": [0.5, 1.0],
            "training.denoise_weight": [0.1, 0.3],
            "training.learning_rate": [1e-4, 1e-3],
        },
    )
    trials = plan(path).trials
    count = {m: sum(t.method == m for t in trials) for m in {t.method for t in trials}}
    # 2 x 2 x 2 x 2 for CRAFT; DDPO has no denoising loss; SFT reads only the learning rate;
    # pretrained trains nothing; use_checklists=false makes the checklist weight moot; the
    # no-lambda ablation keeps its lambda = 0
    assert count == {
        "craft": 16,
        "ddpo": 8,
        "lora_sft": 2,
        "pretrained": 1,
        "craft_no_checklist": 8,
        "craft_no_lambda": 8,
    }
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    pretrained = next(t for t in trials if t.method == "pretrained")
    assert pretrained.params == {} and pretrained.rungs == [0] and pretrained.name == "chexpert-pretrained"
    no_lambda = [t for t in trials if t.method == "craft_no_lambda"]
    assert all(t.cfg.training.denoise_weight == 0.0 for t in no_lambda)
    craft = [t for t in trials if t.method == "craft"]
    assert sorted({t.cfg.training.denoise_weight for t in craft}) == [0.1, 0.3]
    assert all(t.cfg.reward.weights.pathology == t.params["reward.weights.pathology"] for t in craft)
    # each trial's run lives under the sweep directory, named after the trial
    assert all(t.cfg.storage.name == t.name and t.cfg.storage.path.endswith("sweep/runs") for t in trials)


def test_trial_names_are_deterministic_and_tell_values_apart():
    a = trial_name("chexpert", "craft", {"reward.weights.pathology": 1.0, "training.learning_rate": 1e-4})
    assert a == trial_name(
        "chexpert", "craft", {"reward.weights.pathology": 1.0, "training.learning_rate": 1e-4}
    )
    assert a != trial_name(
        "chexpert", "craft", {"reward.weights.pathology": 1.0, "training.learning_rate": 2e-4}
    )
    assert a.startswith("chexpert-craft-pathology1-learning_rate0.0001-")


def test_random_search_draws_are_seeded_and_crossed_with_the_grid(tmp_path):
    spec = validate_spec(
        {
            "name": "r",
            "datasets": ["isic"],
            "methods": ["craft"],
            "space": {
                "reward.weights.pathology": {"grid": [1.0, 2.0]},
                "training.learning_rate": {"loguniform": [1e-5, 1e-3]},
                "reward.weights.realism": {"choice": [0.5, 1.0]},
            },
            "search": {"num_samples": 3, "seed": 7},
        }
    )
    drawn = points(spec)
    assert len(drawn) == 6 and drawn == points(spec)
    assert [p["reward.weights.pathology"] for p in drawn] == [1.0] * 3 + [2.0] * 3
    assert all(1e-5 <= p["training.learning_rate"] <= 1e-3 for p in drawn)
    assert len({p["training.learning_rate"] for p in drawn}) == 6
    other = validate_spec({**spec.model_dump(), "search": {"num_samples": 3, "seed": 8}})
    assert [p["training.learning_rate"] for p in points(other)] != [
        p["training.learning_rate"] for p in drawn
    ]


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"methods": ["craft", "craf"]},
            r"methods\[1\]: unknown method 'craf' for dataset chexpert.*known: .*craft_no_lambda",
        ),
        (
            {"space": {"reward.weights.pathology": [1.0, -1.0]}},
            r"space\.reward\.weights\.pathology: -1\.0 is not valid .*greater than or equal to 0",
        ),
        (
            {"space": {"reward.weights.pathology": {"uniform": [-0.5, 1.0]}}},
            r"space\.reward\.weights\.pathology: -0\.5 is not valid",
        ),
        ({"space": {}}, r"space: empty search space"),
        ({"space": {"reward.weights.pathalogy": [1.0]}}, r"reward\.weights\.pathalogy: unknown key"),
        (
            {"space": {"training.learning_rate": {"grid": []}}},
            r"space\.training\.learning_rate: .*grid: needs at least one value",
        ),
        ({"datasets": ["chexpurt"]}, r"datasets: .*unknown dataset"),
        ({"metric": "val_tail", "mode": "max"}, r"mode: max would pick the worst trial by val_tail"),
        (
            {"overrides": {"model.base": "<an SD-1.5 pipeline path>"}},
            r"replace the 1 placeholder value\(s\) with real ones first \(overrides\.model\.base: <an SD-1\.5 pipeline path>\)",
        ),
    ],
)
def test_bad_specs_are_one_line_errors_with_exit_2(tmp_path, monkeypatch, capsys, fields, message):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(ConfigError, match=message):
        plan(path)
    from craft_ray.cli import main

    monkeypatch.setattr(
        sys, "argv", ["craft", "sweep", "--spec", str(path), "--storage", str(tmp_path / "out")]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_shipped_specs(tmp_path):
    smoke = plan(REPO / "experiments" / "sweeps" / "smoke.yaml")
    assert {(t.dataset, t.method) for t in smoke.trials} == {
        (d, m) for d in ("chexpert", "isic") for m in ("craft", "lora_sft")
    }
    assert len(smoke.trials) == 2 * (2 + 1)  # lora_sft is trained once per dataset
    paper_path = REPO / "experiments" / "sweeps" / "paper.yaml"
    with pytest.raises(ConfigError, match=r"replace the 7 placeholder value.*overrides.model.base: <SD-1.5"):
        load_spec(paper_path)
    data = yaml.safe_load(paper_path.read_text())
    filled = tmp_path / "paper.yaml"  # the placeholders filled in, as a user would

    def fill(node):
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return "tiny" if isinstance(node, str) and node.startswith("<") else node

    data = {**fill(data), "experiments": EXPERIMENTS}
    filled.write_text(yaml.safe_dump(data))
    paper = plan(filled)
    methods = {t.method for t in paper.trials}
    assert methods == {
        "pretrained",
        "lora_sft",
        "full_sft",
        "ddpo",
        "craft",
        "craft_no_enrichment",
        "craft_no_checklist",
        "craft_no_lambda",
    }
    per_dataset = {
        d: sum(t.dataset == d for t in paper.trials) for d in ("chexpert", "isic", "fundus", "histopath")
    }
    header = paper_path.read_text().split("\nname:")[0]
    assert f"{len(paper.trials)} trials" in header  # the GPU-hour arithmetic counts the trials it plans
    assert len(set(per_dataset.values())) == 1


class _Trial:
    """What the sweep's scheduler reads of a Tune trial: its config's name (ids change on restore)."""

    def __init__(self, name: str):
        self.config, self.trial_id = {"name": name}, f"{name}-{id(self)}"


# Four trials of one group run one after the other (rungs at steps 1..4, grace 1, factor 2: ASHA's
# rungs at 1, 2, 4); each reports its validation metric per step. The sweep is interrupted after
# step 2 of "b" and resumed: "b" re-reports its two stored rungs and goes on, then "c" and "d" run.
ASHA_VALUES = {"a": [0.5] * 4, "b": [0.6] * 4, "c": [0.55, 0.4, 0.4, 0.4], "d": [0.52] * 4}


def _asha(tmp_path, sweep_uri=None):
    from craft_ray.tune.scheduler import build_scheduler
    from craft_ray.tune.space import SweepPlan, TrialPlan

    spec = validate_spec(
        {
            "name": "asha",
            "datasets": ["chexpert"],
            "methods": ["craft"],
            "space": {"reward.weights.pathology": [1.0, 2.0]},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        }
    )
    trials = [TrialPlan(n, "chexpert", "craft", {}, None, [1, 2, 3, 4]) for n in ASHA_VALUES]
    return build_scheduler(spec, SweepPlan(trials), sweep_uri)


def _run(scheduler, name: str, steps, sweep_uri=None, clock=None) -> list[tuple[float, str]]:
    """Report `steps` of trial `name` (storing each rung as run_trial does when `sweep_uri`)
    until ASHA stops it; the decisions."""
    from craft_ray.tune import store
    from craft_ray.tune.trial import validation_uri

    trial, out = _Trial(name), []
    scheduler.on_trial_add(None, trial)
    for step in steps:
        record = {"val_cas": ASHA_VALUES[name][int(step) - 1], "step": float(step)}
        if sweep_uri is not None:
            uri = validation_uri(sweep_uri, name, int(step))
            if store.read_json(uri) is None:  # a new rung: stored with the time it was validated
                store.write_json(uri, {**record, "validated_at": next(clock)})
        scheduler.on_trial_result(None, trial, {"phase": "train", "step": float(step)})  # no metric
        decision = scheduler.on_trial_result(None, trial, {**record, "phase": "validated"})
        out.append((float(step), decision))
        if decision == "STOP":
            break
    scheduler.on_trial_complete(None, trial, {**record})
    return out


def test_a_resumed_sweeps_asha_stops_the_same_trials_as_an_uninterrupted_one(tmp_path):
    import itertools

    steps = [1, 2, 3, 4]
    whole = _asha(tmp_path)
    uninterrupted = {name: _run(whole, name, steps) for name in ASHA_VALUES}
    stopped_at = {name: d[-1][0] for name, d in uninterrupted.items()}
    assert stopped_at == {"a": 4.0, "b": 4.0, "c": 2.0, "d": 1.0}  # c and d stopped early

    sweep = str(tmp_path / "sweep")
    clock = itertools.count(1000.0)
    first = _asha(tmp_path, sweep)
    _run(first, "a", steps, sweep, clock)  # finished before the driver died
    _run(first, "b", [1, 2], sweep, clock)  # killed after its second rung
    resumed = _asha(tmp_path, sweep)  # a new driver: the scheduler as built, then the stored rungs
    after = {"b": _run(resumed, "b", steps, sweep, clock)}  # re-reports rungs 1-2, then trains on
    after |= {name: _run(resumed, name, steps, sweep, clock) for name in ("c", "d")}
    assert after == {name: uninterrupted[name] for name in ("b", "c", "d")}

    # without the stored rungs (what Tune restores), "a" is forgotten: "c" is stopped a rung early
    forgetful = _asha(tmp_path)
    _run(forgetful, "b", steps)
    assert _run(forgetful, "c", steps) == [(1.0, "STOP")] != uninterrupted["c"]


def test_the_demo_sweep_chooses_crafts_settings_on_validation(tmp_path):
    """experiments/sweeps/demo.yaml: 6 CRAFT settings (gradient path x rho) and one
    continued LoRA-SFT (it reads none of them), chosen by the independent evaluator's val_cas."""
    spec_path = REPO / "experiments" / "sweeps" / "demo.yaml"
    data = yaml.safe_load(spec_path.read_text())
    # the demo's files the spec names exist only after `craft demo`: point at none of them here
    for key in ("dataset.uri", "model.init_lora", "reward.calibration"):
        data["overrides"].pop(key)
    data["experiments"] = str(REPO / "experiments" / "demo" / "{method}.yaml")
    data["overrides"]["model.init_lora"] = None
    spec = tmp_path / "demo.yaml"
    spec.write_text(yaml.safe_dump(data))
    planned = plan(spec)
    by_method = {m: [t for t in planned.trials if t.method == m] for m in ("craft", "lora_sft")}
    assert len(by_method["craft"]) == 6 and len(by_method["lora_sft"]) == 1
    assert load_spec(spec).metric == "val_cas"
    for trial in by_method["craft"]:
        assert trial.cfg.evaluation.vlm == "phantom-eval:chest"  # selection by the independent evaluator
        assert trial.cfg.training.steps == 60
        assert trial.cfg.reward.augment.copies == 4  # the augmented reward in every trial
    combos = {(t.cfg.training.gradient_path, t.cfg.training.reward_ratio) for t in by_method["craft"]}
    assert combos == {(p, r) for p in ("last_k", "sparse") for r in (0.1, 0.3, 1.0)}
