"""The Clinical Alignment Score: dimensions, weights, gradients, bad input, calibration, tail."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_gradient_matches_finite_differences

from craft_ray.cas import (
    DIMENSIONS,
    Calibration,
    CASEvaluator,
    EvaluatorSpec,
    build_evaluator,
    calibrate,
    tail_report,
)
from craft_ray.cas.tail import image_threshold
from craft_ray.data import ImageParquetDataset
from craft_ray.errors import ScoringError
from craft_ray.models import build_mllm, build_vlm

ROOT = Path(__file__).resolve().parents[1]

LABELS = [
    ["Cardiomegaly"],
    ["No Finding"],
    ["Cardiomegaly", "Pleural Effusion"],
    ["Support Devices", "Lung Opacity"],
]


@pytest.fixture(scope="module")
def evaluator() -> CASEvaluator:
    return CASEvaluator("chexpert", build_vlm("tiny"))


def images(n=4, channels=1, size=48, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_dimensions_are_in_range_and_deterministic(evaluator):
    a = evaluator.score(images(), LABELS)
    b = evaluator.score(images(), LABELS)
    assert set(a.dims) == set(DIMENSIONS)
    for name, values in a.dims.items():
        assert values.shape == (4,) and ((values >= 0) & (values <= 1)).all(), name
        assert torch.equal(values, b.dims[name])
    assert torch.allclose(a.total, torch.stack(list(a.dims.values())).mean(0))
    rows = a.rows()
    assert len(rows) == 4 and set(rows[0]) == {"cas", *DIMENSIONS}


def test_weights_and_zero_weight_dimensions():
    vlm = build_vlm("tiny")
    weights = {"pathology": 3.0, "checklist": 1.0, "anatomy": 0.0, "realism": 0.0}
    result = CASEvaluator("chexpert", vlm, weights).score(images(), LABELS)
    assert set(result.dims) == {"pathology", "checklist"}
    assert torch.allclose(result.total, (3 * result.dims["pathology"] + result.dims["checklist"]) / 4)
    with pytest.raises(ScoringError, match="non-negative"):
        CASEvaluator("chexpert", vlm, {"pathology": -1.0})
    with pytest.raises(ScoringError, match="positive sum"):
        CASEvaluator("chexpert", vlm, dict.fromkeys(DIMENSIONS, 0.0))


def known_embedding_vlm(dataset: str = "chexpert"):
    """A VLM whose embeddings are known: stripe i of the image (bright or dark) is coordinate i of
    its embedding (+1 / -1), label i's 'present' phrase embeds as e_i and its 'absent' phrase as -e_i
    (any other text: a spare axis). An image with bright stripes for its labels shows exactly them."""
    from craft_ray.knowledge.labels import get_dataset
    from craft_ray.knowledge.prompts import finding_pair
    from craft_ray.models.vlm import VLMScorer

    spec = get_dataset(dataset)
    n = len(spec.labels)
    text = {}
    for i, label in enumerate(spec.labels):
        present, absent = finding_pair(spec, label)
        text[present], text[absent] = torch.eye(n + 1)[i], -torch.eye(n + 1)[i]

    def encode_image(pixels: torch.Tensor) -> torch.Tensor:
        stripes = pixels.mean(dim=(1, 3)).reshape(pixels.shape[0], n, -1).mean(dim=2)  # (B, n)
        return torch.cat([stripes * 2 - 1, torch.zeros(pixels.shape[0], 1)], dim=1)

    def encode_text(texts: list[str]) -> torch.Tensor:
        return torch.stack([text.get(t, torch.eye(n + 1)[n]) for t in texts])

    holder = torch.nn.Linear(1, 1)  # device and dtype
    return VLMScorer(
        encode_image,
        encode_text,
        torch.tensor(math.log(10.0)),
        8 * n,
        (0, 0, 0),
        (1, 1, 1),
        [holder],
        "known",
    )


def striped(label_sets, labels):
    n = len(labels)
    x = torch.zeros(len(label_sets), 1, 8 * n, 8 * n)
    for b, present in enumerate(label_sets):
        for label in present:
            i = labels.index(label)
            x[b, :, 8 * i : 8 * (i + 1), :] = 1.0
    return x


def test_pathology_fidelity_scores_true_labels_above_wrong_ones():
    """On a VLM that sees exactly the drawn findings, the true label set scores higher than any
    other, and the more labels are wrong, the lower the score."""
    from craft_ray.knowledge.labels import get_dataset

    labels = list(get_dataset("chexpert").labels)
    ev = CASEvaluator(
        "chexpert", known_embedding_vlm(), {"pathology": 1.0, "checklist": 0, "anatomy": 0, "realism": 0}
    )
    truth = [["Cardiomegaly"], ["Edema", "Pleural Effusion"], ["No Finding"]]
    x = striped(truth, labels)
    true_score = ev.score(x, truth).dims["pathology"]
    one_wrong = ev.score(x, [["Edema"], ["Edema"], ["Cardiomegaly"]]).dims["pathology"]
    two_wrong = ev.score(
        x, [["Edema", "Pneumonia"], ["Cardiomegaly", "Pneumonia"], ["Cardiomegaly", "Edema"]]
    ).dims["pathology"]
    assert (true_score > one_wrong).all() and (one_wrong > two_wrong).all()
    assert (true_score > 0.9).all()


def test_cas_gradient_is_nonzero_and_matches_finite_differences():
    ev = CASEvaluator("isic", build_vlm("tiny").double())
    assert_gradient_matches_finite_differences(
        lambda img: ev.score(img, [["MEL"]]).total.sum(),
        images(1, channels=3, size=32, seed=3).double(),
        seed=1,
    )


def test_greyscale_modalities_penalise_colour(evaluator):
    grey = images(1).expand(-1, 3, -1, -1).clone()
    colour = grey.clone()
    colour[:, 0] = (colour[:, 0] + 0.4).clamp(0, 1)
    realism = evaluator.dimensions["realism"]
    assert (
        evaluator.score(grey, [["No Finding"]]).dims["realism"]
        > evaluator.score(colour, [["No Finding"]]).dims["realism"]
    )
    assert realism.spec.channels == 1


@pytest.mark.parametrize(
    ("x", "labels", "message"),
    [
        (torch.rand(2, 48, 48), [["Cardiomegaly"]] * 2, "shape"),
        (torch.rand(2, 2, 48, 48), [["Cardiomegaly"]] * 2, "shape"),
        (torch.rand(0, 1, 48, 48), [], "empty batch"),
        (torch.rand(1, 1, 8, 8) * 255, [["Cardiomegaly"]], r"in \[0, 1\]"),
        (torch.full((1, 1, 8, 8), float("nan")), [["Cardiomegaly"]], "NaN"),
        (torch.randint(0, 2, (1, 1, 8, 8)), [["Cardiomegaly"]], "floating point"),
        (torch.rand(1, 1, 8, 8), [["Pnemonia"]], r"unknown label\(s\) \['Pnemonia'\]"),
        (torch.rand(1, 1, 8, 8), [[]], "is empty"),
        (torch.rand(2, 1, 8, 8), [["Cardiomegaly"]], "2 images but 1 label sets"),
        (torch.rand(1, 1, 8, 8), ["Cardiomegaly"], "is a string"),
    ],
)
def test_bad_input_is_a_clear_error(evaluator, x, labels, message):
    with pytest.raises(ScoringError, match=message):
        evaluator.score(x, labels)


def test_evaluation_path_uses_the_mllm_without_gradient():
    vlm = build_vlm("tiny")
    ev = CASEvaluator("chexpert", vlm, mllm=build_mllm("tiny"))
    x = images().requires_grad_(True)
    evaluated = ev.score(x, LABELS, evaluate=True)
    assert not evaluated.total.requires_grad
    reward = ev.score(x, LABELS)
    assert reward.total.requires_grad
    assert not torch.allclose(evaluated.dims["checklist"], reward.dims["checklist"])
    assert torch.allclose(evaluated.dims["pathology"], reward.dims["pathology"].detach())


def test_calibration_thresholds_are_real_image_quantiles(phantom_root, tmp_path):
    uri = str(phantom_root / "fundus")
    spec = EvaluatorSpec("fundus")
    cal = calibrate(spec, uri, split="train", q=0.2, batch_size=8)
    ev = cal.evaluator_from_spec()
    assert ev.reference is not None and len(ev.reference.centroid) == 32
    ds = ImageParquetDataset(uri, "train")
    x = torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])
    labels = [ds[i]["labels"] for i in range(len(ds))]
    # the realism reference, by hand: centroid of the normalised embeddings, cosine mean and spread
    emb = torch.nn.functional.normalize(build_vlm("tiny").embed_images(x).detach(), dim=1).double().numpy()
    centroid = emb.mean(axis=0) / np.linalg.norm(emb.mean(axis=0))
    cosines = emb @ centroid
    np.testing.assert_allclose(ev.reference.centroid, centroid, atol=1e-5)
    assert ev.reference.mu == pytest.approx(cosines.mean(), abs=1e-5)
    assert ev.reference.sigma == pytest.approx(cosines.std(ddof=1), abs=1e-5)
    scores = ev.score(x, labels, evaluate=True).total.numpy()
    for label, tau in cal.thresholds.items():
        values = np.sort(scores[[label in ls for ls in labels]])
        assert len(values) == cal.counts[label]
        h = (len(values) - 1) * 0.2  # the q-quantile between order statistics, written out
        lo = int(np.floor(h))
        expected = values[lo] + (h - lo) * (values[min(lo + 1, len(values) - 1)] - values[lo])
        assert tau == pytest.approx(float(expected), abs=1e-6)
        assert (values < tau).mean() <= 0.2 + 1 / len(values)
    assert cal.distribution["overall"]["n"] == len(ds)
    cal.save(tmp_path / "cal.json")
    loaded = Calibration.load(tmp_path / "cal.json")
    assert loaded.thresholds == cal.thresholds and loaded.evaluator == spec


def test_tail_metric_on_a_known_distribution():
    scores = np.linspace(0.0, 1.0, 1000, endpoint=False)  # uniform grid: P(score < t) = t exactly
    labels = [["MEL"] if i % 2 else ["NV"] for i in range(1000)]
    rows = {r.group: r for r in tail_report(scores, labels, {"MEL": 0.1, "NV": 0.3})}
    assert rows["MEL"].n == 500 and rows["MEL"].share == pytest.approx(0.1, abs=0.002)
    assert rows["NV"].share == pytest.approx(0.3, abs=0.002)
    assert rows["overall"].share == pytest.approx(0.2, abs=0.002)
    for row in rows.values():
        assert row.ci_low <= row.share <= row.ci_high
    se = math.sqrt(0.1 * 0.9 / 500)  # binomial standard error: the CI is about +-1.96 se
    assert rows["MEL"].ci_high - rows["MEL"].ci_low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert image_threshold(["MEL", "NV"], {"MEL": 0.1, "NV": 0.3}) == 0.1
    assert image_threshold(["BCC"], {"MEL": 0.1}) is None


def test_tail_intervals_stay_honest_for_small_groups_and_empty_tails():
    """No image below its threshold is not a certain 0: the exact interval's upper end is
    1 - (alpha/2)^(1/n) (and symmetrically when all are below); a group of 3 gets a wide interval."""
    scores = [0.9] * 30 + [0.1, 0.9, 0.9]
    labels = [["MEL"]] * 30 + [["NV"]] * 3
    rows = {r.group: r for r in tail_report(scores, labels, {"MEL": 0.5, "NV": 0.5})}
    assert (rows["MEL"].n, rows["MEL"].below, rows["MEL"].share, rows["MEL"].ci_low) == (30, 0, 0.0, 0.0)
    assert rows["MEL"].ci_high == pytest.approx(1 - 0.025 ** (1 / 30), rel=1e-9)  # 0.1157
    all_below = tail_report([0.1] * 30, [["MEL"]] * 30, {"MEL": 0.5})[0]
    assert (all_below.ci_low, all_below.ci_high) == (pytest.approx(0.025 ** (1 / 30), rel=1e-9), 1.0)
    nv = rows["NV"]
    assert nv.n == 3 and nv.below == 1 and nv.ci_low < 0.05 and nv.ci_high > 0.85  # 1 of 3 says little
    from scipy.stats import beta  # Clopper-Pearson from the beta quantiles, independently of binomtest

    assert (nv.ci_low, nv.ci_high) == (
        pytest.approx(beta.ppf(0.025, 1, 3), rel=1e-9),
        pytest.approx(beta.ppf(0.975, 2, 2), rel=1e-9),
    )


def test_tail_counts_nan_scores_and_images_without_a_threshold():
    """NaN scores and labels absent from the calibration are counted and reported, not dropped
    (they used to vanish from the overall n, and the JSON held bare NaN)."""
    scores = [0.1, float("nan"), 0.9, 0.2, 0.8]
    labels = [["MEL"], ["MEL"], ["MEL"], ["BCC"], ["BCC"]]
    rows = {r.group: r for r in tail_report(scores, labels, {"MEL": 0.5})}
    assert (rows["MEL"].n, rows["MEL"].below, rows["MEL"].nan_scores) == (2, 1, 1)
    assert (rows["BCC"].n, rows["BCC"].no_threshold, rows["BCC"].share, rows["BCC"].threshold) == (
        0,
        2,
        None,
        None,
    )
    overall = rows["overall"]
    assert (overall.n, overall.below, overall.nan_scores, overall.no_threshold) == (2, 1, 1, 2)
    json.loads(json.dumps([r.as_json() for r in rows.values()], allow_nan=False))  # strict JSON


def test_share_difference_bootstrap_matches_the_normal_approximation():
    from craft_ray.cas.tail import share_difference_ci

    low, high = share_difference_ci(200, 1000, 100, 1000, n_boot=20000, seed=1)
    se = math.sqrt(0.2 * 0.8 / 1000 + 0.1 * 0.9 / 1000)
    assert low == pytest.approx(0.1 - 1.96 * se, abs=0.004) and high == pytest.approx(
        0.1 + 1.96 * se, abs=0.004
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "craft_ray.cli", *args], capture_output=True, text=True, timeout=600
    )


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not valid JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cas_cli_calibrate_then_score(phantom_root, tmp_path, craft_in_process):
    uri = str(phantom_root / "histo")
    cal_path = tmp_path / "thresholds.json"
    calibrate = ["cas", "calibrate", "--data", uri, "--split", "val", "--out", str(cal_path), "--q", "0.1"]
    result = run_cli(*calibrate)  # 5 images: MUC and STR are absent, the others rest on one image
    assert result.returncode == 0, result.stderr
    calibration = _strict_json(cal_path.read_text())
    assert calibration["counts"]["MUC"] == calibration["counts"]["STR"] == 0
    assert set(calibration["thresholds"]) == {"ADI", "BACK", "LYM", "NORM", "TUM"}
    assert "warning: MUC rests on 0 real image(s): it gets no threshold" in result.stdout
    assert "warning: ADI rests on 1 real image(s): its threshold is interpolated" in result.stdout
    again = run_cli(*calibrate)  # a real process: exit status 2, one line
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    assert _strict_json(cal_path.read_text()) == calibration  # untouched
    out = tmp_path / "scores.parquet"
    score = ["cas", "score", "--images", uri, "--thresholds", str(cal_path), "--split", "train"]
    result = run_cli(*score, "--out", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    assert len(table) == 40 and {
        "image_id",
        "labels",
        "cas",
        *DIMENSIONS,
        "threshold",
        "below_threshold",
    } <= set(table[0])
    orphans = [r for r in table if r["labels"][0] in ("MUC", "STR")]
    assert len(orphans) == 16 and all(
        r["threshold"] is None and r["below_threshold"] is None for r in orphans
    )
    document = _strict_json((tmp_path / "scores.tail.json").read_text())  # the name README states
    assert document["images"] == 40 and document["scored"] == 40 and document["not_scored"] == {}
    tail = {r["group"]: r for r in document["groups"]}
    assert tail["overall"]["n"] == 40 - 16 and tail["overall"]["no_threshold"] == 16  # were silently dropped
    assert (
        tail["MUC"]["no_threshold"] == 8 and tail["MUC"]["share"] is None and tail["MUC"]["threshold"] is None
    )
    assert "overall" in result.stdout and "16 image(s) have no threshold" in result.stdout
    for args, message in [
        (["--out", str(cal_path)], "would overwrite the calibration"),  # used to replace it, exit 0
        (["--out", str(out)], "already exists; pass --overwrite"),
        (["--out", str(tmp_path / "s.parquet"), "--batch-size", "0"], "--batch-size"),
    ]:
        bad = craft_in_process(*score, *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert _strict_json(cal_path.read_text()) == calibration and not (tmp_path / "s.parquet").exists()
    (tmp_path / "half.tail.json").mkdir()  # the tail report cannot be written: nothing is, not half
    bad = craft_in_process(
        "cas",
        "score",
        "--images",
        uri,
        "--thresholds",
        str(cal_path),
        "--out",
        str(tmp_path / "half.parquet"),
    )
    assert bad.returncode == 2 and "is a directory" in bad.stderr and not (tmp_path / "half.parquet").exists()
    manifest = str(phantom_root / "histo" / "manifest.json")
    bad = craft_in_process(
        "cas", "score", "--images", uri, "--thresholds", manifest, "--out", str(tmp_path / "m.parquet")
    )
    assert (
        bad.returncode == 2 and "is not a craft-ray calibration file (it is a dataset manifest)" in bad.stderr
    )
    bad = craft_in_process(
        "cas",
        "score",
        "--images",
        str(phantom_root / "chest"),
        "--thresholds",
        str(cal_path),
        "--out",
        str(out),
        "--overwrite",
    )
    assert bad.returncode == 2 and "calibrated for 'histopath'" in bad.stderr
    bad = craft_in_process(
        "cas", "calibrate", "--data", uri, "--out", str(tmp_path / "w.json"), "--weights", "style=1"
    )
    assert bad.returncode == 2 and "--weights" in bad.stderr


def test_build_evaluator_from_spec_round_trip():
    spec = EvaluatorSpec(
        "histopath",
        labels=["ADI", "TUM"],
        weights={"pathology": 1, "checklist": 0, "anatomy": 0, "realism": 1},
    )
    ev = build_evaluator(spec)
    result = ev.score(images(2, channels=3), [["ADI"], ["TUM"]])
    assert set(result.dims) == {"pathology", "realism"}
    assert EvaluatorSpec(**spec.to_dict()) == spec


def test_calibrate_options_given_with_a_config_override_it(phantom_root, tmp_path):
    """`cas calibrate --config F --vlm X ...` applies the options on top of the experiment; none is
    silently ignored."""
    from craft_ray.cli.cas import _evaluator_spec

    uri = str(phantom_root / "chest")
    config = tmp_path / "exp.yaml"
    config.write_text(
        json.dumps(
            {"extends": str(ROOT / "experiments" / "chexpert" / "craft.yaml"), "dataset": {"uri": uri}}
        )
    )
    from_config = _evaluator_spec(uri, config, None, None, None, None, None)
    assert from_config.vlm == "tiny" and len(from_config.labels) == 6
    overlay = tmp_path / "overlay.yaml"
    spec = _evaluator_spec(
        uri, config, "small", "tiny", "pathology=2,realism=1", "Cardiomegaly, No Finding", [overlay]
    )
    assert (spec.vlm, spec.mllm, spec.labels) == ("small", "tiny", ["Cardiomegaly", "No Finding"])
    assert spec.weights == {"pathology": 2.0, "realism": 1.0} and spec.checklists == [str(overlay)]
