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


def test_pathology_fidelity_rewards_the_conditioned_labels(evaluator):
    """Swapping the label set changes fidelity the way the per-label probabilities say it should."""
    x = images(1)
    probs_present = evaluator.score(x, [["Cardiomegaly"]]).dims["pathology"]
    probs_absent = evaluator.score(x, [["No Finding"]]).dims["pathology"]
    assert not torch.isclose(probs_present, probs_absent)


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
    scores = ev.score(x, labels, evaluate=True).total.numpy()
    for label, tau in cal.thresholds.items():
        values = scores[[label in ls for ls in labels]]
        assert len(values) == cal.counts[label]
        assert tau == pytest.approx(float(np.quantile(values, 0.2)), abs=1e-6)
        assert (values < tau).mean() <= 0.2 + 1 / len(values)  # linear interpolation between order stats
    assert cal.distribution["overall"]["n"] == len(ds)
    cal.save(tmp_path / "cal.json")
    loaded = Calibration.load(tmp_path / "cal.json")
    assert loaded.thresholds == cal.thresholds and loaded.evaluator == spec


def test_tail_metric_on_a_known_distribution():
    scores = np.linspace(0.0, 1.0, 1000, endpoint=False)  # uniform grid: P(score < t) = t exactly
    labels = [["MEL"] if i % 2 else ["NV"] for i in range(1000)]
    rows = {r.group: r for r in tail_report(scores, labels, {"MEL": 0.1, "NV": 0.3}, n_boot=4000, seed=0)}
    assert rows["MEL"].n == 500 and rows["MEL"].share == pytest.approx(0.1, abs=0.002)
    assert rows["NV"].share == pytest.approx(0.3, abs=0.002)
    assert rows["overall"].share == pytest.approx(0.2, abs=0.002)
    for row in rows.values():
        assert row.ci_low <= row.share <= row.ci_high
    se = math.sqrt(0.1 * 0.9 / 500)  # binomial standard error: the CI is about +-1.96 se
    assert rows["MEL"].ci_high - rows["MEL"].ci_low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert image_threshold(["MEL", "NV"], {"MEL": 0.1, "NV": 0.3}) == 0.1
    assert math.isnan(image_threshold(["BCC"], {"MEL": 0.1}))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "craft_ray.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_cas_cli_calibrate_then_score(phantom_root, tmp_path):
    uri = str(phantom_root / "derm")
    cal_path = tmp_path / "thresholds.json"
    result = run_cli(
        "cas", "calibrate", "--data", uri, "--split", "train", "--out", str(cal_path), "--q", "0.1"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(cal_path.read_text())["thresholds"]
    out = tmp_path / "scores.parquet"
    result = run_cli("cas", "score", "--images", uri, "--thresholds", str(cal_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    assert len(table) == 48 and {
        "image_id",
        "labels",
        "cas",
        *DIMENSIONS,
        "threshold",
        "below_threshold",
    } <= set(table[0])
    tail = json.loads(out.with_suffix(".tail.json").read_text())
    assert tail[-1]["group"] == "overall" and tail[-1]["n"] == 48
    assert "overall" in result.stdout
    bad = run_cli(
        "cas",
        "score",
        "--images",
        str(phantom_root / "chest"),
        "--thresholds",
        str(cal_path),
        "--out",
        str(out),
    )
    assert bad.returncode == 2 and "calibrated for 'isic'" in bad.stderr
    bad = run_cli("cas", "calibrate", "--data", uri, "--out", str(cal_path), "--weights", "style=1")
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
