"""The demo's experiments and its headline table (no Ray; the end-to-end run is in test_train_ray.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from craft_ray.config import ExperimentConfig
from craft_ray.demo import DEMO_EXPERIMENTS, DemoLayout, load_experiments
from craft_ray.demo.summary import aggregate, method_row, seed_differences, table_rows, verdict_counts
from craft_ray.errors import ConfigError


def test_demo_experiments_use_the_shipped_models_and_the_demo_paths(tmp_path):
    layout = DemoLayout(tmp_path)
    experiments = load_experiments(DEMO_EXPERIMENTS, layout, seed=7, overrides={"training.steps": 3})
    # the shared warm start first (trained, not evaluated), then the main method, then the baselines
    assert [(e.cfg.run_name, e.evaluated) for e in experiments][:2] == [
        ("demo-warm", False),
        ("demo-craft", True),
    ]
    assert {e.method for e in experiments if e.evaluated} == {"craft", "lora_sft", "pretrained"}
    warm = str(tmp_path / "seed-7" / "runs" / "demo-warm")
    assert {e.cfg.run_name: e.cfg.model.init_lora for e in experiments} == {
        "demo-warm": None,
        "demo-craft": warm,
        "demo-lora_sft": warm,
        "demo-pretrained": None,
    }
    for exp in experiments:
        cfg: ExperimentConfig = exp.cfg
        # every method starts from the shipped phantom diffusion base
        assert cfg.model.base == "phantom" and cfg.model.vlm == "phantom:chest"
        assert cfg.evaluation.classifier == "phantom:chest" and cfg.evaluation.vlm == "phantom-eval:chest"
        assert cfg.seed == 7 and cfg.evaluation.seed == 7
        assert cfg.dataset.uri == str(tmp_path / "data" / "chexpert")
        assert cfg.storage.path == str(tmp_path / "seed-7" / "runs")
        # the reward's calibration (its VLM's realism reference) and the evaluation's are separate files
        assert cfg.reward.calibration == str(tmp_path / "cas" / "chexpert-reward.json")
        assert cfg.evaluation.calibration == str(tmp_path / "cas" / "chexpert-evaluation.json")
        assert cfg.scaling.workers == (1 if exp.method == "pretrained" else 2)
    by_method = {e.method: e.cfg for e in experiments}
    # the baselines are compared on equal terms: same LoRA, steps, batch and learning rate
    for key in ("steps", "batch_size", "learning_rate"):
        assert getattr(by_method["craft"].training, key) == getattr(by_method["lora_sft"].training, key)
    assert by_method["craft"].training.steps == 3 and by_method["pretrained"].training.steps == 3


def test_demo_reuses_data_and_calibration_only_while_they_match(tmp_path):
    """Data made with other options is refused; a calibration is reused while its data and
    evaluator are the same, and regenerated data under the same path is noticed."""
    from craft_ray.data.phantoms import make_phantom_dataset
    from craft_ray.demo import DemoOptions
    from craft_ray.demo.run import ensure_calibrations, ensure_data
    from craft_ray.evaluation import Reporter

    messages: list[str] = []

    class Recording(Reporter):
        def say(self, text: str) -> None:
            messages.append(text)

    cfg = load_experiments(DEMO_EXPERIMENTS, DemoLayout(tmp_path), seed=0)[0].cfg
    opts = DemoOptions(tmp_path, n=40, size=32)
    made = ensure_data(cfg, opts, Recording())
    assert made.options["n"] == 40 and ensure_data(cfg, opts, Recording()) == made
    with pytest.raises(ConfigError, match=r"data made with other options: n 40 \(this demo: 60\)"):
        ensure_data(cfg, DemoOptions(tmp_path, n=60, size=32), Recording())
    ensure_calibrations(cfg, Recording())
    first = {p: Path(p).read_bytes() for p in (cfg.reward.calibration, cfg.evaluation.calibration)}
    ensure_calibrations(cfg, Recording())
    assert {p: Path(p).read_bytes() for p in first} == first
    assert "reward calibration: reusing" in messages[-2] and "evaluation calibration: reusing" in messages[-1]
    # the data regenerated in place (another seed): the calibration made on the old data is stale
    make_phantom_dataset("chest", 40, cfg.dataset.uri, size=32, seed=5, overwrite=True)
    with pytest.raises(ConfigError, match=r"calibrated with other inputs: the data \(regenerated since\)"):
        ensure_calibrations(cfg, Recording())
    with pytest.raises(ConfigError, match=r"seed 5 \(this demo: 0\)"):
        ensure_data(cfg, opts, Recording())


def test_demo_experiments_must_name_one_craft_run(tmp_path):
    for name in ("pretrained", "lora_sft", "warm"):
        (tmp_path / f"{name}.yaml").write_text((DEMO_EXPERIMENTS / f"{name}.yaml").read_text())
    (tmp_path / "_common.yaml").write_text(
        (DEMO_EXPERIMENTS / "_common.yaml").read_text().replace("../", f"{DEMO_EXPERIMENTS.parent}/")
    )
    with pytest.raises(ConfigError, match="exactly one 'craft'"):
        load_experiments(tmp_path, DemoLayout(tmp_path / "out"), seed=0)
    with pytest.raises(ConfigError, match="no such experiments directory"):
        load_experiments(tmp_path / "nope", DemoLayout(tmp_path / "out"), seed=0)


def _metrics(cas: float, tail: float, auroc: float, acc: float) -> dict:
    dims = {
        d: {"mean": cas + k / 100} for k, d in enumerate(("pathology", "checklist", "anatomy", "realism"))
    }
    return {
        "cas": {"overall": {"cas": {"mean": cas}, **dims}},
        "tail": {"overall": {"share": tail}},
        "out_of_family": {"auroc": {"macro": auroc}, "accuracy": {"mean": acc}},
        "downstream": {"generated": {"macro": 0.7}},
    }


def test_headline_rows_aggregate_over_seeds_with_sample_sd():
    per_seed = {
        0: {
            "craft": method_row(_metrics(0.6, 0.10, 0.8, 0.7)),
            "lora_sft": method_row(_metrics(0.5, 0.2, 0.7, 0.6)),
        },
        1: {
            "craft": method_row(_metrics(0.7, 0.30, 0.6, 0.8)),
            "lora_sft": method_row(_metrics(0.5, 0.2, 0.7, 0.6)),
        },
    }
    assert per_seed[0]["craft"]["realism"] == pytest.approx(0.63)
    summary = aggregate(per_seed)
    cas = summary["craft"]["cas"]
    assert cas["mean"] == pytest.approx(0.65) and cas["sd"] == pytest.approx(math.sqrt(0.005))  # ddof 1
    assert summary["lora_sft"]["tail_share"]["sd"] == pytest.approx(0.0)
    heading, rows = table_rows(summary, ["craft", "lora_sft"])
    assert heading[0] == "method" and rows[0][0] == "craft"
    assert rows[0][heading.index("CAS")] == "0.650 ± 0.071"
    assert rows[0][heading.index("tail share")] == "20.0 ± 14.1 %"


def test_a_win_is_a_ci_that_excludes_zero_not_a_positive_sign():
    """Seed verdicts come from the paired comparisons in metrics.json; a seed counts as a win only
    when its CI excludes zero in the better direction (lower for the tail share)."""

    def comparison(auroc_ci, tail_ci):
        rows = {
            "oof_auroc:macro": {"difference": sum(auroc_ci) / 2, "ci": auroc_ci, "verdict": ""},
            "tail:overall": {"difference": sum(tail_ci) / 2, "ci": tail_ci, "verdict": ""},
        }
        from craft_ray.evaluation.paired import verdict

        rows["oof_auroc:macro"]["verdict"] = verdict(auroc_ci, 1)
        rows["tail:overall"]["verdict"] = verdict(tail_ci, -1)
        return {"baselines": {"lora@final": {"differences": {"metrics": rows}}}}

    seeds = {
        0: seed_differences(comparison([0.02, 0.10], [-0.2, -0.05])),  # both wins
        1: seed_differences(comparison([-0.01, 0.08], [-0.1, 0.02])),  # positive, but not a win
        2: seed_differences(comparison([-0.09, -0.01], [0.01, 0.05])),  # both losses
    }
    counts = verdict_counts(seeds, "lora@final")
    assert counts["oof_auroc:macro"] == "wins 1/3, losses 1/3"
    assert counts["tail:overall"] == "wins 1/3, losses 1/3"


REDUCED = {  # the demo at a reduced size: one step, two sampler steps, two images per label
    "training.steps": 1,
    "training.sampler_steps": 2,
    "training.backprop_steps": 2,  # CRAFT's K and sparse steps must not exceed T
    "training.sparse_steps": 2,
    "evaluation.n_per_label": 2,
    "evaluation.classifier_epochs": 1,
    "evaluation.n_boot": 100,
}


def _demo_cli(ray_local, out, *dataset: str):
    """`craft demo [--dataset D] --out OUT --n 48` at the reduced size, as a user runs it, on the
    test's Ray cluster."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "craft_ray.cli", "demo", *dataset, "--out", str(out), "--n", "48"]
    args += [a for k, v in REDUCED.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "COLUMNS": "300"}
    return subprocess.run(args, capture_output=True, text=True, timeout=1200, env=env)


@pytest.mark.slow
def test_demo_end_to_end_then_continues(ray_local, tmp_path):
    """`craft demo` as a user runs it (on this test's Ray cluster, reduced size): three methods
    trained on Ray Train, evaluated with the shipped out-of-family classifier, a report and the
    table; run again, it retrains and re-evaluates nothing."""
    import json

    from craft_ray.demo import DemoOptions, run_demo
    from craft_ray.evaluation import Reporter

    out = tmp_path / "demo"
    result = _demo_cli(ray_local, out)
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join((result.stdout + result.stderr).split())  # progress goes to stderr, the table to stdout
    assert "training craft for 1 steps on 2 Ray Train worker(s)" in said
    for method in ("craft", "lora_sft", "pretrained"):
        assert f"demo-{method}" in said
        assert (out / "chexpert" / "seed-0" / "runs" / f"demo-{method}" / "final" / "model.json").is_file()
    assert "OOF AUROC" in result.stdout and "tail share" in result.stdout

    def not_strict(constant: str):
        raise AssertionError(f"summary.json holds {constant}: not strict JSON")

    # one seed: no sd, written as null (NaN is not JSON)
    summary = json.loads((out / "chexpert" / "summary.json").read_text(), parse_constant=not_strict)
    assert summary["methods"]["craft"]["cas"]["sd"] is None
    rows = summary["per_seed"]["0"]
    assert set(rows) == {"craft", "lora_sft", "pretrained"}
    for row in rows.values():  # every headline number measured (the classifier's AUROC may be NaN
        for key in ("cas", "tail_share", "oof_accuracy"):  # with 2 images per label)
            assert 0.0 <= row[key] <= 1.0, (key, row)
    # the paired differences of craft against each baseline, per seed and pooled
    for base in ("lora_sft", "pretrained"):
        assert set(summary["differences"]["0"][base]) >= {"cas", "tail:overall"}
        assert summary["pooled"][base]["cas"]["verdict"] in ("win", "loss", "no difference")
    assert "paired difference" in result.stdout
    report = out / "chexpert" / "seed-0" / "report"
    assert (report / "report.md").is_file() and list(report.glob("figures/*.png"))
    assert "## Out-of-family evaluator (ground truth)" in (report / "report.md").read_text()

    messages: list[str] = []

    class Recording(Reporter):
        def say(self, text: str) -> None:
            messages.append(text)

    from craft_ray.demo.datasets import dataset_overrides

    overrides = {**dataset_overrides(DEMO_EXPERIMENTS, "chexpert"), **REDUCED}  # what the CLI passes
    again, summary_again = run_demo(
        DemoOptions(out / "chexpert", n=48, overrides=overrides), [0], Recording()
    )  # in process, on the same cluster
    assert all(r.reused for r in again[0].results)
    assert sum("trained (1 steps), reusing" in m for m in messages) == 4  # the warm start too
    assert not any("training" in m or "continuing" in m for m in messages)
    assert summary_again["per_seed"][0]["craft"]["cas"] == pytest.approx(rows["craft"]["cas"])


# dataset -> (modality, the labels its demo evaluates): the other modalities' demos, end to end
OTHER_DEMOS = {
    "fundus": ("fundus", ["No DR", "Moderate NPDR", "Proliferative DR"]),
    "histopath": ("histo", ["LYM", "STR", "TUM"]),
    "isic": ("derm", ["MEL", "NV", "BKL"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(OTHER_DEMOS))
def test_demo_on_another_dataset_uses_its_own_models_end_to_end(ray_local, tmp_path, dataset):
    """`craft demo --dataset D` as a user runs it (reduced size): the same experiments on D's
    phantoms, trained and evaluated with D's shipped reward VLM, evaluation VLM and out-of-family
    classifier, under <out>/D."""
    import json

    modality, labels = OTHER_DEMOS[dataset]
    out = tmp_path / "demo"
    result = _demo_cli(ray_local, out, "--dataset", dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"CRAFT vs baselines on {dataset}" in " ".join(result.stdout.split())
    summary = json.loads((out / dataset / "summary.json").read_text())
    assert summary["dataset"] == dataset and summary["overrides"]["evaluation.labels"] == labels
    assert set(summary["per_seed"]["0"]) == {"craft", "lora_sft", "pretrained"}
    for method in ("craft", "lora_sft", "pretrained"):
        run = out / dataset / "seed-0" / "runs" / f"demo-{method}"
        assert (run / "final" / "model.json").is_file()
        config = (run / "final" / "config.yaml").read_text()
        assert f"phantom:{modality}" in config and f"name: {dataset}" in config
    report = (out / dataset / "seed-0" / "report" / "report.md").read_text()
    assert f"phantom-eval:{modality}" in report  # CAS by the evaluation VLM, not the reward
    assert f"_classifier: phantom:{modality}" in report  # the dataset's out-of-family classifier
    assert "chest" not in report.lower()
    # the report's paired CI is the summary's (the same resamples: evaluation.n_boot, not a default)
    shown = [summary["differences"]["0"][base]["cas"] for base in ("lora_sft", "pretrained")]
    assert any(f"| {d['difference']:z.3f} [{d['ci'][0]:z.3f}, {d['ci'][1]:z.3f}] (" in report for d in shown)


def test_a_warm_start_experiment_is_trained_first_and_not_evaluated(tmp_path):
    """`model.init_lora: "@<run>"` names another experiment of the directory: it becomes the shared
    warm start of the runs that continue from it (CRAFT and continued LoRA-SFT)."""
    root = DEMO_EXPERIMENTS.parent
    common = f"extends: [{root}/base.yaml, {root}/datasets/chexpert.yaml]\nmodel: {{base: tiny, vlm: tiny}}\n"
    (tmp_path / "_common.yaml").write_text(common)
    (tmp_path / "warm.yaml").write_text("extends: _common.yaml\nname: demo-warm\nmethod: lora_sft\n")
    (tmp_path / "craft.yaml").write_text(
        "extends: _common.yaml\nname: demo-craft\nmethod: craft\nmodel: {init_lora: '@demo-warm'}\n"
    )
    (tmp_path / "sft.yaml").write_text(
        "extends: _common.yaml\nname: demo-sft\nmethod: lora_sft\nmodel: {init_lora: '@demo-warm'}\n"
    )
    layout = DemoLayout(tmp_path / "out")
    experiments = load_experiments(tmp_path, layout, seed=2)
    assert [e.cfg.run_name for e in experiments] == ["demo-warm", "demo-craft", "demo-sft"]
    assert [e.evaluated for e in experiments] == [False, True, True]
    warm_dir = str(layout.runs(2) / "demo-warm")
    assert all(e.cfg.model.init_lora == warm_dir for e in experiments[1:])
    (tmp_path / "sft.yaml").write_text(
        "extends: _common.yaml\nname: demo-sft\nmethod: lora_sft\nmodel: {init_lora: '@demo-nope'}\n"
    )
    with pytest.raises(ConfigError, match="'@demo-nope' names no other experiment"):
        load_experiments(tmp_path, layout, seed=2)


def test_a_dataset_without_shipped_models_is_refused_before_any_work(tmp_path, craft_in_process, monkeypatch):
    """`craft demo --dataset X` needs the shipped reward VLM, evaluation VLM and classifier of X's
    modality: without them, one line naming the `craft pretrain` command, before Ray starts."""
    import craft_ray.models.phantom as phantom

    empty = tmp_path / "assets"
    (empty / "diffusion").mkdir(parents=True)
    (empty / "diffusion" / "model_index.json").write_text("{}")
    monkeypatch.setattr(phantom, "assets_root", lambda: empty)
    result = craft_in_process("demo", "--dataset", "isic", "--out", str(tmp_path / "demo"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "craft pretrain vlm --modality derm" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()  # nothing made
    result = craft_in_process("demo", "--dataset", "dermoscopy", "--out", str(tmp_path / "demo"))
    assert result.returncode == 2 and "chexpert, fundus, histopath, isic" in result.stderr


def test_several_datasets_are_named_with_commas_in_the_order_given():
    from craft_ray.demo.datasets import datasets_of

    assert datasets_of(DEMO_EXPERIMENTS, "fundus, chexpert") == ["fundus", "chexpert"]
    assert datasets_of(DEMO_EXPERIMENTS, "all") == ["chexpert", "fundus", "histopath", "isic"]


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("fundus,chexpert,fundus", "fundus named twice"),
        ("fundus,,chexpert", "name one dataset, several separated by commas, or all"),
        ("fundus,dermoscopy", "'dermoscopy': not a dataset of this demo"),
        ("derm", "derm is a modality: the dataset is isic"),
        ("ALL", "names are lower case: all"),
        ("Fundus", "names are lower case: fundus"),
        ("all,chexpert", "all already names every dataset"),
    ],
)
def test_a_bad_dataset_choice_names_the_problem(choice, message):
    from craft_ray.demo.datasets import datasets_of
    from craft_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        datasets_of(DEMO_EXPERIMENTS, choice)


def test_a_model_path_that_does_not_exist_is_refused_before_any_work(tmp_path, craft_in_process):
    missing = tmp_path / "no-such-vlm"
    out = tmp_path / "demo"
    result = craft_in_process("demo", "--out", str(out), "--set", f"evaluation.vlm={missing}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"evaluation.vlm: '{missing}': no such directory" in " ".join(result.stderr.split())
    assert not out.exists()  # nothing made


def test_a_missing_shipped_model_is_told_under_the_key_that_named_it(tmp_path, monkeypatch):
    """The reward VLM's family named as the evaluator: the fix goes under evaluation.vlm, not under
    model.vlm (the key a reward VLM usually has)."""
    import craft_ray.models.phantom as phantom
    from craft_ray.demo.datasets import check_shipped_models
    from craft_ray.errors import ModelError

    cfg = load_experiments(DEMO_EXPERIMENTS, DemoLayout(tmp_path), 0)[0].cfg
    cfg.model.vlm = str(tmp_path)  # a local model: exists, not checked against the assets
    cfg.evaluation.vlm = "phantom:chest"
    monkeypatch.setattr(phantom, "assets_root", lambda: tmp_path / "empty")
    with pytest.raises(ModelError, match="no shipped VLM weights for 'phantom:chest'") as caught:
        check_shipped_models(cfg)
    assert "`evaluation.vlm: DIR`" in str(caught.value) and "--set evaluation.vlm=DIR" in str(caught.value)
    assert "model.vlm" not in str(caught.value)


@pytest.mark.parametrize("evaluator", ["phantom:chest", ""])  # the reward VLM, or none (the reward's)
def test_an_in_reward_evaluator_is_said_before_any_work(tmp_path, monkeypatch, evaluator):
    """The demo's evaluator named as the reward VLM: allowed (every table marks it), but said
    before the cluster starts, for the methods trained on that reward only."""
    import craft_ray.raycluster
    from craft_ray.demo import DemoOptions, run_demo
    from craft_ray.evaluation import Reporter

    said = []

    class Recorder(Reporter):
        def say(self, text: str) -> None:
            said.append(text)

    def no_cluster(address=None):
        raise RuntimeError("stop before any work")

    monkeypatch.setattr(craft_ray.raycluster, "ensure_ray", no_cluster)
    opts = DemoOptions(tmp_path / "demo", overrides={"evaluation.vlm": evaluator})
    with pytest.raises(RuntimeError, match="stop before any work"):
        run_demo(opts, reporter=Recorder())
    assert said == [
        "warning: the CAS and tail of craft will be in-reward: the evaluator phantom:chest is the VLM they "
        "are trained to maximise (name an independent evaluator: evaluation.vlm=phantom-eval)"
    ]
    said.clear()
    with pytest.raises(RuntimeError, match="stop before any work"):  # the shipped demo: independent
        run_demo(DemoOptions(tmp_path / "demo"), reporter=Recorder())
    assert said == []


def test_demo_dataset_settings_name_each_datasets_labels():
    from craft_ray.demo.datasets import available, dataset_overrides
    from craft_ray.knowledge.labels import get_dataset

    assert available(DEMO_EXPERIMENTS) == ["chexpert", "fundus", "histopath", "isic"]
    for name in available(DEMO_EXPERIMENTS):
        sets = dataset_overrides(DEMO_EXPERIMENTS, name)
        experiments = load_experiments(DEMO_EXPERIMENTS, DemoLayout(Path("/tmp/x")), 0, sets)
        for exp in experiments:
            assert exp.cfg.dataset.name == name
            spec = get_dataset(name)
            assert set(exp.cfg.evaluation.labels) <= set(spec.phantom_labels)
            assert exp.cfg.model.vlm == f"phantom:{spec.modality}"


def test_demo_data_has_artefacts_in_the_fine_tuning_split_only(tmp_path):
    """As real training data has artefacts, a share of the demo's training phantoms carries one
    hallucination-like defect; the held-out splits (thresholds, label sets, test) stay clean."""
    import json

    from craft_ray.data.reading import read_table
    from craft_ray.demo import DemoOptions
    from craft_ray.demo.run import ensure_data
    from craft_ray.evaluation import Reporter

    cfg = load_experiments(DEMO_EXPERIMENTS, DemoLayout(tmp_path), seed=0)[0].cfg
    manifest = ensure_data(cfg, DemoOptions(tmp_path, n=80, size=32, implausible=0.5), Reporter())
    assert manifest.options["implausible_splits"] == ["train"]
    defective = {}
    for split in ("train", "val", "test"):
        rows = read_table(cfg.dataset.uri, split, columns=["attributes"]).column("attributes").to_pylist()
        defective[split] = sum("implausible" in json.loads(a) for a in rows) / len(rows)
    assert 0.3 < defective["train"] < 0.7 and defective["val"] == defective["test"] == 0.0
    with pytest.raises(ConfigError, match="implausible"):  # the same directory, asked without artefacts
        ensure_data(cfg, DemoOptions(tmp_path, n=80, size=32, implausible=0.0), Reporter())


def _summary(tails: dict[str, float], pooled_tail: dict[str, tuple[float, tuple[float, float], str]]) -> dict:
    """A demo summary as run_demo writes it, reduced to what the table across datasets reads."""
    methods = {
        m: {"cas": {"mean": 0.7}, "tail_share": {"mean": t}, "oof_auroc": {"mean": 0.6}}
        for m, t in tails.items()
    }
    pooled = {
        base: {
            "tail:overall": {
                "difference": diff,
                "ci": list(ci),
                "verdict": verdict,
                "baseline": tails[base],
                "relative_reduction": -diff / tails[base],
            }
        }
        for base, (diff, ci, verdict) in pooled_tail.items()
    }
    return {"main": "craft", "methods": methods, "pooled": pooled}


def test_the_table_across_datasets_reduces_the_tail_against_the_strongest_baseline(capsys, monkeypatch):
    """The strongest baseline is the one with the lowest tail share (not the one CRAFT beats most);
    its reduction is in points of tail share with the CI turned round, and the mean relative
    reduction averages the datasets' relative reductions (worked out by hand below)."""
    from craft_ray.cli.demo import print_across
    from craft_ray.demo.datasets import across_datasets

    isic = _summary(  # LoRA-SFT has the lower tail: CRAFT 0.10 vs 0.15 -> 5 points, 1/3 relative
        {"craft": 0.10, "lora_sft": 0.15, "pretrained": 0.30},
        {"lora_sft": (-0.05, (-0.08, -0.02), "win"), "pretrained": (-0.20, (-0.25, -0.15), "win")},
    )
    fundus = _summary(  # the base has the lower tail: CRAFT is 2 points worse, -1/9 relative
        {"craft": 0.20, "lora_sft": 0.25, "pretrained": 0.18},
        {"lora_sft": (-0.05, (-0.09, -0.01), "win"), "pretrained": (0.02, (-0.01, 0.05), "no difference")},
    )
    table = across_datasets({"isic": isic, "fundus": fundus})
    assert table["tail_reduction"]["isic"]["baseline"] == "lora_sft"
    assert table["tail_reduction"]["fundus"]["baseline"] == "pretrained"
    assert table["tail_reduction"]["isic"]["points"] == pytest.approx(5.0)
    assert table["tail_reduction"]["isic"]["points_ci"] == pytest.approx([2.0, 8.0])
    assert table["tail_reduction"]["fundus"]["points"] == pytest.approx(-2.0)
    assert table["mean_relative_tail_reduction"] == pytest.approx((1 / 3 - 1 / 9) / 2)
    assert table["rows"]["fundus"]["pretrained"]["tail_share"] == pytest.approx(0.18)
    from craft_ray.cli.common import console

    monkeypatch.setattr(console, "width", 300)  # one row per line, as a wide terminal shows it
    print_across(table)
    said = " ".join(capsys.readouterr().out.split())
    assert "mean relative tail reduction across isic, fundus: 11.1 %" in said
    assert "+5.0 [+2.0, +8.0] vs lora_sft (win)" in said and "33.3 %" in said


def test_a_progress_phase_is_shown_after_its_bars_description(monkeypatch):
    """Two calibrations (the reward's, the evaluator's) report the same phases: each bar keeps
    saying which one it is."""
    import io

    from rich.console import Console

    import craft_ray.cli.common as common

    out = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=out, width=200, force_terminal=False))
    with common.progress_bar("calibrating the evaluation CAS (phantom-eval:derm)") as update:
        update(1, 2, "scoring real images (2/2)")
    assert "calibrating the evaluation CAS (phantom-eval:derm): scoring real images (2/2)" in out.getvalue()
