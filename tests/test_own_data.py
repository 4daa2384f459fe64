"""A researcher's own CheXpert-layout export, end to end: the README's walk-through run as written
(convert -> calibrate -> score), totals that add up, reasons that name the path tried, one image
path on every route (offline, a --images folder, the evaluation's score stage), and calibration
mismatches caught before any work. The CAS service leg is in test_serve_evaluator.py."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from craft_ray.data import read_manifest, read_table
from craft_ray.data.images import decode_png
from craft_ray.knowledge.labels import CHEXPERT

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_block(heading: str) -> list[str]:
    """The commands of the first bash block under `heading`, continuation lines joined."""
    section = README.split(f"### {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """Run the README's "Your own data, end to end" block as written, in a fresh directory."""
    from craft_ray.cli import main

    work = tmp_path_factory.mktemp("own")
    outputs: dict[str, subprocess.CompletedProcess] = {}
    written: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for line in readme_block("Your own data, end to end"):
            if line.startswith("# writes:"):
                written = line.removeprefix("# writes:").split()
                continue
            args = shlex.split(line, comments=True)
            if args[0] == "python":  # the export maker, from the checkout
                subprocess.run([sys.executable, str(ROOT / args[1]), *args[2:]], check=True, cwd=work)
                continue
            assert args[0] == "craft", line
            mp.setattr(sys, "argv", args)
            code, out, err = 0, io.StringIO(), io.StringIO()
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):  # rich prints to sys.stdout
                try:
                    main()
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 0
            result = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
            assert code == 0, (line, result.stdout, result.stderr)
            outputs[f"{args[1]} {args[2]}"] = result
    return work, outputs, written


def test_readme_walkthrough_writes_the_files_it_names(walked):
    work, outputs, written = walked
    assert written and all((work / name).is_file() for name in written), written
    assert not (work / "runs/cas/mine_scores.parquet.tail.json").exists()


def test_conversion_accounts_for_every_row(walked):
    work, outputs, _ = walked
    text = " ".join(outputs["data convert"].stdout.split())
    # 18 frontal + 5 lateral train rows + 2 valid rows; README: "stores 18, filters 5, rejects 2"
    assert "25 input(s): 18 stored, 5 filtered, 2 rejected" in text
    assert "filtered: 5 image(s): Lateral view (--frontal-only)" in text
    assert "images with uncertain (-1) labels: 4, of which with no positive label: 3" in text
    manifest = read_manifest(str(work / "data/mine"))
    assert sum(c["images"] for c in manifest.counts.values()) == 18 and manifest.rejects == 2
    assert manifest.options["filtered_by"] == {"Lateral view (--frontal-only)": 5}
    rejects = {
        r["source"]: r["reason"] for r in pq.read_table(work / "data/mine/rejects.parquet").to_pylist()
    }
    missing = rejects["CheXpert-v1.0-small/train/patient00016/study1/view1_frontal.jpg"]
    tried = missing.removeprefix("file not found (tried ").removesuffix(")").split(", ")
    export = (work / "my-export").resolve()
    assert str(export / "CheXpert-v1.0-small/train/patient00016/study1/view1_frontal.jpg") in tried
    assert all(Path(p).is_absolute() and not Path(p).exists() for p in tried)
    truncated = rejects["CheXpert-v1.0-small/train/patient00015/study1/view1_frontal.jpg"]
    assert f"cannot decode image {export}/CheXpert-v1.0-small/train/patient00015" in truncated


def test_16_bit_pngs_are_stored_windowed_not_white(walked):
    work, _, _ = walked
    source = work / "my-export/CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.png"
    values = np.asarray(Image.open(source)).astype(np.float64)
    assert values.max() > 255  # a real 16-bit image
    by_hand = np.floor((values - values.min()) * 255 / (values.max() - values.min()) + 0.5)
    manifest = read_manifest(str(work / "data/mine"))
    rows = [r for s in manifest.counts for r in read_table(str(work / "data/mine"), s).to_pylist()]
    stored = next(r for r in rows if r["image_id"] == "patient00009_study1_view1_frontal")
    assert (stored["width"], stored["height"]) == (90, 72)  # its own size: no --size given
    assert np.array_equal(decode_png(stored["image"], 1)[..., 0], by_hand.astype(np.uint8))


def test_every_image_is_in_the_scores_and_the_totals_add_up(walked):
    work, outputs, _ = walked
    scores = pq.read_table(work / "runs/cas/mine_scores.parquet").to_pylist()
    assert len(scores) == 18  # every stored image, scored or not
    status = {r["image_id"]: r["status"] for r in scores}
    only_uncertain = {f"patient{p:05d}_study1_view1_frontal" for p in (12, 13, 14)}
    assert {i for i, s in status.items() if s == "only_uncertain"} == only_uncertain
    assert sum(s == "scored" for s in status.values()) == 15
    for row in scores:
        if row["status"] == "scored":
            assert 0 <= row["cas"] <= 1 and row["reason"] is None
        else:
            assert row["cas"] is None and "only uncertain labels" in row["reason"]
    tail = json.loads((work / "runs/cas/mine_scores.tail.json").read_text())
    assert tail["images"] == 18 and tail["scored"] == 15 and tail["not_scored"] == {"only_uncertain": 3}
    overall = tail["groups"][-1]
    assert overall["group"] == "overall"
    assert overall["n"] + overall["nan_scores"] + overall["no_threshold"] == tail["scored"]
    text = " ".join(outputs["cas score"].stdout.split())
    assert "18 images in split(s) test, train, val, valid: 15 scored" in text
    assert "not scored: 3 image(s): only uncertain labels" in text
    calibration = json.loads((work / "runs/cas/mine.json").read_text())
    assert calibration["skipped_reasons"] == {"only_uncertain": calibration["skipped"]}


def test_a_folder_row_is_scored_or_says_why_and_scores_equal_the_datasets_and_the_evaluations(
    walked, tmp_path, craft_in_process
):
    """`cas score --images DIR`: every labels.csv row is in the output; the 16-bit non-square PNG
    gets the CAS its converted copy gets, and the one the evaluation's score stage gives it."""
    work, _, _ = walked
    folder = tmp_path / "mine"
    folder.mkdir()
    export = work / "my-export/CheXpert-v1.0-small/train"
    (folder / "a16.png").write_bytes((export / "patient00009/study1/view1_frontal.png").read_bytes())
    (folder / "b.jpg").write_bytes((export / "patient00001/study1/view1_frontal.jpg").read_bytes())
    (folder / "trunc.jpg").write_bytes((export / "patient00015/study1/view1_frontal.jpg").read_bytes())
    (folder / "empty.jpg").write_bytes((folder / "b.jpg").read_bytes())
    (folder / "labels.csv").write_text(
        "file,labels\na16.png,Cardiomegaly\nb.jpg,Cardiomegaly\ntrunc.jpg,Edema\ngone.png,Edema\n"
        "b.jpg,Edema\nempty.jpg,\nbad.jpg,Pnemonia\n"
    )
    out = tmp_path / "s.parquet"
    calibration = work / "runs/cas/mine.json"
    result = craft_in_process(
        "cas", "score", "--images", str(folder), "--thresholds", str(calibration), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 7  # one per labels.csv row
    by = {(r["image_id"], r["status"]): r for r in rows}
    assert {k[1] for k in by} == {"scored", "rejected", "no_labels"}
    assert f"file not found: {folder / 'gone.png'}" in by[("gone.png", "rejected")]["reason"]
    assert f"cannot decode image {folder / 'trunc.jpg'}" in by[("trunc.jpg", "rejected")]["reason"]
    assert "listed twice" in by[("b.jpg", "rejected")]["reason"]
    assert "unknown label(s) ['Pnemonia']" in by[("bad.jpg", "rejected")]["reason"]
    tail = json.loads((tmp_path / "s.tail.json").read_text())
    assert (
        tail["images"] == 7 and tail["scored"] == 2 and tail["not_scored"] == {"rejected": 4, "no_labels": 1}
    )
    offline = by[("a16.png", "scored")]["cas"]
    dataset = pq.read_table(work / "runs/cas/mine_scores.parquet").to_pylist()
    converted = next(r for r in dataset if r["image_id"] == "patient00009_study1_view1_frontal")
    assert offline == pytest.approx(converted["cas"], abs=1e-6)
    # the evaluation's score stage (craft evaluate, sweeps' validation), fed the file's bytes
    from craft_ray.cas import Calibration
    from craft_ray.evaluation.stages import ScoreStage

    stage = ScoreStage({"calibration": json.loads(calibration.read_text()), "embedding": "pixels"})
    batch = pa.table({"image": [(folder / "a16.png").read_bytes()], "labels": [["Cardiomegaly"]]})
    evaluated = stage(batch).column("cas").to_pylist()[0]
    assert evaluated == pytest.approx(offline, abs=1e-6)
    assert Calibration.load(calibration).evaluator.vlm == "tiny"


def test_a_calibration_for_another_label_set_or_vlm_is_refused_before_any_work(
    walked, tmp_path, craft_in_process
):
    work, _, _ = walked
    calibration = work / "runs/cas/mine.json"  # all 14 CheXpert labels, the tiny VLM
    base = ROOT / "experiments/chexpert/craft.yaml"  # the 6 phantom labels
    labels = json.dumps(list(CHEXPERT.labels))
    configs = {
        "reward.yaml": f"extends: [{base}]\ndataset: {{uri: {work / 'data/mine'}}}\nreward: {{calibration: {calibration}}}\n",
        "evaluation.yaml": f"extends: [{base}]\nmodel: {{vlm: small}}\ndataset: {{uri: {work / 'data/mine'}, labels: {labels}}}\n"
        f"evaluation: {{calibration: {calibration}}}\n",
        "good.yaml": f"extends: [{base}]\ndataset: {{uri: {work / 'data/mine'}, labels: {labels}}}\n"
        f"reward: {{calibration: {calibration}}}\nevaluation: {{calibration: {calibration}}}\n",
    }
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    result = craft_in_process("config", "validate", *(str(tmp_path / n) for n in configs))
    assert result.returncode == 2
    err = " ".join(result.stderr.split())
    assert (
        f"{tmp_path / 'reward.yaml'}: reward.calibration: calibration {calibration} does not match the config's reward: labels"
        in err
    )
    assert "Enlarged Cardiomediastinum" in err  # the calibration's side is named
    assert (
        f"{tmp_path / 'evaluation.yaml'}: evaluation.calibration:" in err and "vlm 'tiny' vs 'small'" in err
    )
    assert f"ok {tmp_path / 'good.yaml'}" in " ".join(result.stdout.split())
    # the commands themselves refuse before Ray starts (no cluster line on stderr)
    train = craft_in_process(
        "train", "--config", str(tmp_path / "reward.yaml"), "--storage", str(tmp_path / "runs")
    )
    assert train.returncode == 2 and "does not match the config's reward" in train.stderr
    evaluate = craft_in_process(
        "evaluate",
        "--method",
        "pretrained",
        "--config",
        str(tmp_path / "evaluation.yaml"),
        "--out",
        str(tmp_path / "ev"),
    )
    assert evaluate.returncode == 2 and "evaluation.calibration" in evaluate.stderr
    assert "Ray cluster" not in train.stderr + evaluate.stderr and not (tmp_path / "ev").exists()


def test_help_lists_every_accepted_model_name(craft_in_process):
    text = " ".join(craft_in_process("cas", "calibrate", "--help").stdout.split())
    for name in ("tiny", "small", "phantom", "phantom:<modality>", "open_clip:<name>", "http(s) URL"):
        assert name in text, name
