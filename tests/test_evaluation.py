"""`craft evaluate` / `craft generate` / `craft report` on tiny runs with a real local Ray cluster."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from craft_ray.config import validate_config
from craft_ray.data import ImageParquetDataset, read_manifest
from craft_ray.evaluation import EvalRequest, evaluate, open_run

pytestmark = pytest.mark.slow
LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]
EVALUATION = {"batch_size": 4, "shard_size": 4, "n_boot": 200, "classifier_epochs": 4, "top_pairs": 4}


def make_run(data: Path, storage: Path, method: str, dataset: str = "chexpert", labels=LABELS) -> Path:
    """A 1-step run with `final/`, as `craft train` leaves it (trained in-process, no Ray Train)."""
    from craft_ray.train.loop import train_loop
    from craft_ray.train.session import LocalSession

    cfg = validate_config(
        {
            "name": f"tiny-{method}-{dataset}",
            "method": method,
            "seed": 1,
            "dataset": {"name": dataset, "uri": str(data), "resolution": 32, "labels": labels},
            "training": {"steps": 1, "sampler_steps": 2, "checkpoint_every": 1, "learning_rate": 0.05},
            "evaluation": EVALUATION,
            "storage": {"path": str(storage)},
        }
    ).resolved()
    run = storage / cfg.run_name
    train_loop(cfg, LocalSession(run))
    checkpoint = sorted(run.glob("checkpoint_*"))[-1]
    (run / "final").mkdir()
    for name in ("lora", "model.json", "config.yaml"):
        src = checkpoint / name
        if src.is_dir():
            shutil.copytree(src, run / "final" / name)
        elif src.exists():
            shutil.copy(src, run / "final" / name)
    return run


@pytest.fixture(scope="module")
def runs(phantom_root, tmp_path_factory, ray_local):
    storage = tmp_path_factory.mktemp("eval-runs")
    craft = make_run(phantom_root / "chest", storage, "lora_sft")
    base = make_run(phantom_root / "chest", storage, "pretrained")
    return {"craft": craft, "baseline": base, "storage": storage, "data": phantom_root}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread in this process (far faster when other jobs load the machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def evaluated(runs, one_thread):
    """The main run evaluated with its baseline; the first attempt dies after one shard of the main
    run (as a killed command would), the second continues it. Records which shards each built."""
    from craft_ray.evaluation import pipeline, runner

    built: list[list[int]] = []
    real_build, real_run = pipeline.build_dataset, runner.run_shards

    def spy_build(source, sampler, plan, shards, *rest):
        built.append(list(shards))
        return real_build(source, sampler, plan, shards, *rest)

    def crash_after_first_shard(store, plan, args, shards, progress=None):
        source, sampler, plan_, _, *rest = args  # what build_dataset was called with
        real_run(store, plan, spy_build(source, sampler, plan_, shards[:1], *rest), shards[:1], progress)
        raise KeyboardInterrupt("killed")

    request = EvalRequest(n_per_label=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "build_dataset", lambda *args: args)
        patch.setattr(runner, "run_shards", crash_after_first_shard)
        with pytest.raises(KeyboardInterrupt):
            evaluate(open_run(runs["craft"]), [open_run(runs["baseline"])], request)
    partial = runs["craft"] / "eval.partial"
    interrupted = {
        "final_exists": (runs["craft"] / "eval").exists(),
        "shards": sorted(p.name for p in (partial / "shards").iterdir()),
        "plan": pq.read_schema(partial / "shards" / "shard-00000.parquet")
        .metadata[b"craft_ray.plan"]
        .decode(),
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "build_dataset", spy_build)
        results = evaluate(open_run(runs["craft"]), [open_run(runs["baseline"])], request)
    return {"results": results, "built": built, "interrupted": interrupted}


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `craft ARGS` in this process (the real entry point: exit codes, one-line errors)."""
    from craft_ray.cli import main

    monkeypatch.setattr(sys, "argv", ["craft", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


def test_evaluate_writes_scores_images_and_metrics_then_reuses_them(runs, evaluated):
    main, base = evaluated["results"]
    assert not main.reused and not base.reused
    eval_dir = runs["craft"] / "eval"
    assert main.directory == eval_dir and not (runs["craft"] / "eval.partial").exists()
    scores = pq.read_table(eval_dir / "scores.parquet")
    assert scores.num_rows == 12 and scores.column("index").to_pylist() == list(range(12))
    for col in (
        "image_id",
        "seed",
        "labels",
        "cas",
        "pathology",
        "checklist",
        "anatomy",
        "realism",
        "threshold",
        "below_threshold",
        "oof_prob",
        "oof_agreement",
        "audit_items",
        "audit_p",
    ):
        assert col in scores.column_names, col
    rows = scores.to_pylist()
    for row in rows:
        assert 0.0 <= row["cas"] <= 1.0 and len(row["oof_prob"]) == len(LABELS)
        assert row["below_threshold"] == (row["cas"] < row["threshold"])
        assert row["target_label"] in row["labels"]
    assert [sum(r["target_label"] == label for r in rows) for label in LABELS] == [2] * 6
    # the images are a canonical dataset every reader understands
    manifest = read_manifest(str(eval_dir / "images"))
    assert manifest.counts["generated"]["images"] == 12 and manifest.dataset == "chexpert"
    images = ImageParquetDataset(str(eval_dir / "images"), "generated")
    assert len(images) == 12 and images[0]["pixel_values"].shape == (1, 32, 32)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert set(metrics) >= {
        "cas",
        "tail",
        "out_of_family",
        "downstream",
        "memorisation",
        "audit",
        "baselines",
    }
    assert metrics["tail"]["overall"]["n"] == 12 and metrics["audit"]["path"] == "vlm-surrogate"
    comparison = metrics["baselines"][base.source.name]
    assert comparison["paired"] is True and set(comparison["tail"]) == {*LABELS, "overall"}
    # paired differences with CIs: CAS, tail (thresholds redrawn from the real calibration images), OOF
    differences = comparison["differences"]
    assert differences["paired"] is True and differences["threshold_noise"] is True
    assert {"cas", "tail:overall", "oof_auroc:macro", "oof_accuracy"} <= set(differences["metrics"])
    assert all(len(r["ci"]) == 2 for r in differences["metrics"].values())
    assert "threshold noise included" in metrics["tail"]["overall"]["ci_method"]
    # lora_sft optimised no reward: its CAS is not in-reward, whatever VLM scored it
    assert metrics["in_reward"]["cas"] is False and metrics["in_reward"]["reward_models"] == {}
    assert (eval_dir / "memorisation_pairs.png").stat().st_size > 1000
    memo = metrics["memorisation"]  # the copy threshold calibrated on the held-out (val) real images
    assert memo["threshold_source"] == "auto" and memo["heldout"]["split"] == "val"
    assert memo["threshold_ci"][0] <= memo["threshold"] <= memo["threshold_ci"][1] < 1.0
    # the baseline was evaluated on the same label sets and seeds
    base_scores = pq.read_table(runs["baseline"] / "eval" / "scores.parquet")
    assert base_scores.column("seed").equals(scores.column("seed"))
    # a second run of the same command does no work: no Ray job, files untouched
    stamp = (eval_dir / "scores.parquet").stat().st_mtime_ns
    again = evaluate(open_run(runs["craft"]), [open_run(runs["baseline"])], EvalRequest(n_per_label=2))
    assert all(r.reused for r in again) and again[0].metrics == metrics
    assert (eval_dir / "scores.parquet").stat().st_mtime_ns == stamp


def test_an_interrupted_evaluation_resumes_where_it_stopped_and_reproduces_images(runs, evaluated):
    from craft_ray.evaluation import ImageGenerator, SamplerSettings
    from craft_ray.evaluation.plan import image_seed

    # the killed attempt left no finished evaluation, only shard 0 of the main run
    interrupted = evaluated["interrupted"]
    assert (interrupted["final_exists"], interrupted["shards"]) == (False, ["shard-00000.parquet"])
    # its shard recorded the plan it was generated for: the finished evaluation's
    identity = json.loads((runs["craft"] / "eval" / "eval.json").read_text())["identity"]
    assert interrupted["plan"] == identity["plan"]
    # the rerun generated only the missing shards of the main run, then the whole baseline
    assert evaluated["built"] == [[0], [1, 2], [0, 1, 2]]
    # an image is reproduced from its row alone (labels + seed), byte for byte
    scores = pq.read_table(runs["craft"] / "eval" / "scores.parquet").slice(0, 4).to_pylist()
    assert [r["seed"] for r in scores] == [image_seed(0, i) for i in range(4)]
    source = open_run(runs["craft"])
    generator = ImageGenerator(source, SamplerSettings.from_config(source.cfg))
    images, prompts = generator.generate([r["labels"] for r in scores], [r["seed"] for r in scores])
    stored = ImageParquetDataset(str(runs["craft"] / "eval" / "images"), "generated")
    for k, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        assert prompt == scores[k]["prompt"]
        assert np.array_equal(image, (stored[k]["pixel_values"][0].numpy() * 255).round().astype(np.uint8))


def test_an_evaluation_is_identified_by_the_content_of_its_inputs(runs, evaluated, tmp_path):
    """A calibration changed under the same path, or data regenerated in place, is not the finished
    evaluation: the command stops and names what changed (no Ray job), and --overwrite does not
    reuse the artefacts cached by the evaluation it replaces."""
    import dataclasses

    from craft_ray.data.phantoms import make_phantom_dataset
    from craft_ray.errors import EvaluationError
    from craft_ray.evaluation.real import RealData
    from craft_ray.evaluation.runner import effective_config, evaluation_plan, plan_jobs
    from craft_ray.evaluation.store import CALIBRATION, METRICS, EvalStore

    data, calibration = tmp_path / "chest", tmp_path / "cal.json"
    shutil.copytree(runs["data"] / "chest", data)
    shutil.copy(runs["craft"] / "eval" / "calibration.json", calibration)
    source = open_run(runs["craft"])
    cfg = validate_config(
        {
            **source.cfg.model_dump(mode="json"),
            "dataset": {**source.cfg.dataset.model_dump(mode="json"), "uri": str(data)},
            "evaluation": {**source.cfg.evaluation.model_dump(mode="json"), "calibration": str(calibration)},
        }
    )
    source = dataclasses.replace(source, cfg=cfg)
    request = EvalRequest(n_per_label=2, out=tmp_path / "eval")

    def state(overwrite: bool = False) -> str:
        request.overwrite = overwrite
        cfg = effective_config(source.cfg, request)
        plan = evaluation_plan(cfg, LABELS, RealData(cfg, LABELS, cfg.evaluation.split))
        job = plan_jobs(source, [], cfg, LABELS, request, plan)[0]
        state.job = job
        return job.state

    assert state() == "new"
    store = EvalStore(tmp_path / "eval")  # an evaluation finished with these inputs
    store.start({"identity": state.job.identity}, fresh=True)
    shutil.copy(calibration, store.partial / CALIBRATION)
    (store.partial / METRICS).write_text("{}")
    store.promote()
    assert state() == "complete"
    # recalibrated to the same path
    cal = json.loads(calibration.read_text())
    cal["thresholds"] = {k: v + 0.01 for k, v in cal["thresholds"].items()}
    calibration.write_text(json.dumps(cal))
    with pytest.raises(
        EvaluationError, match=r"other settings \(inputs.calibration: '[0-9a-f]{16}' -> '[0-9a-f]"
    ):
        state()
    assert state(overwrite=True) == "new" and state.job.store.existing(CALIBRATION) is None
    shutil.copy(store.final / CALIBRATION, calibration)
    assert state() == "complete"
    # the data regenerated in place (another seed; the same path)
    make_phantom_dataset("chest", 48, data, size=32, seed=4, overwrite=True)
    with pytest.raises(EvaluationError, match=r"other settings \(inputs.data: .*; plan: "):
        state()
    request.replace_hint = "remove that eval directory"  # a caller without --overwrite (craft demo)
    with pytest.raises(EvaluationError, match=r"other settings .*; remove that eval directory$"):
        state()


def _foreign_run(runs) -> Path:
    """A finished run of another dataset (isic), as a baseline that cannot be compared."""
    run = runs["storage"] / "isic-run"
    if not run.exists():
        shutil.copytree(runs["baseline"], run, ignore=shutil.ignore_patterns("eval*"))
        cfg = yaml.safe_load((run / "final" / "config.yaml").read_text())
        cfg["dataset"] = {"name": "isic", "uri": str(runs["data"] / "derm"), "resolution": 32}
        cfg["name"] = "isic-run"
        (run / "final" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, evaluated, monkeypatch, capsys):
    unfinished = runs["storage"] / "unfinished"
    shutil.copytree(runs["craft"], unfinished, ignore=shutil.ignore_patterns("eval*", "final"))
    cases = [
        (["--run", str(unfinished)], "no final/ checkpoint"),
        (["--run", str(runs["craft"]), "--labels", "Cardiomegaly,Pnemonia"], "unknown label(s) ['Pnemonia']"),
        (["--run", str(runs["craft"]), "--n-per-label", "0"], "--n-per-label must be at least 1"),
        (["--run", str(runs["craft"]), "--baseline", str(_foreign_run(runs))], "runs of different datasets"),
        (["--run", str(runs["craft"]), "--n-per-label", "3"], "holds an evaluation with other settings"),
    ]
    before = {p: p.stat().st_mtime_ns for p in runs["storage"].rglob("*")}
    for args, message in cases:
        code, _, err = cli(monkeypatch, capsys, "evaluate", *args)
        assert code == 2, (args, err)
        assert message in " ".join(err.split()) and "Traceback" not in err, err
        assert err.lstrip().startswith("error:") and err.count("error:") == 1
    assert {p: p.stat().st_mtime_ns for p in runs["storage"].rglob("*")} == before  # nothing written


def test_generate_contact_sheet_and_score_the_folder(runs, evaluated, tmp_path, monkeypatch, capsys):
    out = tmp_path / "samples"
    code, stdout, err = cli(
        monkeypatch,
        capsys,
        "generate",
        "--run",
        str(runs["craft"]),
        "--labels",
        "Pleural Effusion,Support Devices",
        "--n",
        "3",
        "--seed",
        "5",
        "--out",
        str(out),
    )
    assert code == 0, err
    names = sorted(p.name for p in out.glob("sample_*.png"))
    assert names == ["sample_0000_seed5.png", "sample_0001_seed6.png", "sample_0002_seed7.png"]
    with Image.open(out / "sample_0000_seed5.png") as image:
        assert image.size == (32, 32) and image.mode == "L"
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.size[0] > 300
    samples = json.loads((out / "samples.json").read_text())
    assert [i["seed"] for i in samples["images"]] == [5, 6, 7]
    # any folder of images with labels.csv can be scored
    scored = tmp_path / "scored.parquet"
    calibration = runs["craft"] / "eval" / "calibration.json"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "cas",
        "score",
        "--images",
        str(out),
        "--thresholds",
        str(calibration),
        "--out",
        str(scored),
    )
    assert code == 0, err
    table = pq.read_table(scored)
    assert sorted(table.column("image_id").to_pylist()) == names
    assert all(ls == ["Pleural Effusion", "Support Devices"] for ls in table.column("labels").to_pylist())
    code, _, err = cli(
        monkeypatch,
        capsys,
        "generate",
        "--run",
        str(runs["craft"]),
        "--labels",
        "Cardiomegaly",
        "--n",
        "1",
        "--out",
        str(out),
    )
    assert code == 2 and "not empty" in err


def test_report_renders_every_table_and_figure(runs, evaluated, tmp_path):
    from craft_ray.report.build import build_report

    path = build_report([runs["craft"], runs["baseline"]], tmp_path / "report")
    text = path.read_text()
    for heading in (
        "## Runs",
        "## Out-of-family evaluator (ground truth)",
        "paired differences (run - strongest baseline",
        "## Clinical Alignment Score",
        "## Low-alignment tail",
        "## Downstream classification",
        "## Memorisation",
        "## Checklist audit",
        "## Samples",
    ):
        assert heading in text, heading
    names = [r.source.name for r in evaluated["results"]]
    assert all(text.count(name) >= 5 for name in names)
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert figures == [
        "cas_chexpert.png",
        "memorisation_0.png",
        "memorisation_1.png",
        "samples_chexpert.png",
        "tail_chexpert.png",
    ]
    for name in figures:
        assert f"figures/{name}" in text
        with Image.open(tmp_path / "report" / "figures" / name) as image:
            assert image.size[0] > 400 and image.size[1] > 200
