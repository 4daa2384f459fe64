"""Measurement you can trust: an evaluator that is not the reward (in-reward marks), paired
comparisons with bootstrap CIs, tail intervals that include the thresholds' noise, and the reward
seeing greyscale images as evaluation stores them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import mannwhitneyu

from craft_ray.config import validate_config
from craft_ray.evaluation.paired import (
    OOFSpec,
    RealScores,
    RunScores,
    paired_comparison,
    pool_comparisons,
    run_intervals,
    verdict,
)

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def _cfg(method: str, vlm: str = "phantom", eval_vlm: str | None = None, **extra):
    return validate_config(
        {
            "name": "m",
            "method": method,
            "dataset": {"name": "chexpert", "uri": "data", "labels": LABELS},
            "model": {"vlm": vlm},
            "evaluation": {"vlm": eval_vlm} if eval_vlm else {},
            **extra,
        }
    )


def test_a_cas_computed_by_the_runs_reward_vlm_is_marked_in_reward():
    from craft_ray.evaluation.in_reward import in_reward
    from craft_ray.evaluation.references import evaluation_spec
    from craft_ray.report.tables import cas_table

    craft = _cfg("craft")  # evaluation.vlm unset: the evaluation scores with the reward VLM
    mark = in_reward(craft, evaluation_spec(craft))
    assert mark["cas"] is True and mark["models"] == ["phantom:chest"] and "in-reward" in mark["note"]
    independent = _cfg("craft", eval_vlm="phantom-eval")
    assert evaluation_spec(independent).vlm == "phantom-eval:chest"
    assert in_reward(independent, evaluation_spec(independent))["cas"] is False
    # the same evaluator is not in-reward for a method that never optimised it
    sft = _cfg("lora_sft")
    assert in_reward(sft, evaluation_spec(sft))["cas"] is False
    # the evaluate tables say so in their title and note
    metrics = {"model": "m@final", "cas": {"overall": {}, "per_label": {}}, "in_reward": mark}
    table = cas_table(metrics)
    assert "[in-reward]" in table.title and "in-reward" in table.note
    assert "[in-reward]" not in cas_table({**metrics, "in_reward": {"cas": False}}).title


def test_a_bare_phantom_eval_name_resolves_to_the_datasets_modality_and_other_modalities_are_refused():
    from craft_ray.errors import ConfigError

    assert _cfg("craft", eval_vlm="phantom-eval").evaluation.vlm == "phantom-eval:chest"
    with pytest.raises(
        ConfigError, match=r"evaluation\.vlm 'phantom-eval:derm' names another modality; dataset"
    ):
        _cfg("craft", eval_vlm="phantom-eval:derm")
    with pytest.raises(ConfigError, match=r"'phantom-eval:dermx' names no modality \(known: chest, derm"):
        _cfg("craft", eval_vlm="phantom-eval:dermx")


def _runs(n: int = 400, seed: int = 0, shift: float = 0.6):
    """Two paired runs on 2 labels: `a`'s classifier probabilities separate the labels better."""
    rng = np.random.default_rng(seed)
    sets = [["Cardiomegaly"] if i % 2 else ["Pleural Effusion"] for i in range(n)]
    keys = [(f"g{i}", i, tuple(s)) for i, s in enumerate(sets)]
    truth = np.array([[s == ["Cardiomegaly"], s == ["Pleural Effusion"]] for s in sets], float)
    prob_a = np.clip(truth * shift + rng.normal(0.2, 0.25, (n, 2)), 0, 1)
    prob_b = np.clip(truth * 0.1 + rng.normal(0.2, 0.25, (n, 2)), 0, 1)
    cas_a = rng.normal(0.62, 0.08, n)
    cas_b = cas_a - 0.04 + rng.normal(0, 0.02, n)
    return RunScores(cas_a, sets, keys, prob_a), RunScores(cas_b, sets, keys, prob_b), truth


def test_paired_comparison_points_match_hand_formulas_and_give_verdicts_by_the_ci():
    a, b, truth = _runs()
    labels = ["Cardiomegaly", "Pleural Effusion"]
    oof = OOFSpec(labels, multilabel=True)
    out = paired_comparison(a, b, labels, {"Cardiomegaly": 0.5, "Pleural Effusion": 0.5}, None, oof, 400)
    m = out["metrics"]
    assert out["paired"] is True
    # AUROC = Mann-Whitney U / (n_pos n_neg), computed with scipy, independently of the module
    for j, label in enumerate(labels):
        pos, neg = truth[:, j] > 0, truth[:, j] == 0
        for run, key in ((a, "run"), (b, "baseline")):
            u = mannwhitneyu(run.oof_prob[pos, j], run.oof_prob[neg, j]).statistic
            assert m[f"oof_auroc:{label}"][key] == pytest.approx(u / (pos.sum() * neg.sum()))
    assert m["cas"]["difference"] == pytest.approx(a.cas.mean() - b.cas.mean())
    tail_a = np.mean(a.cas < 0.5)
    assert m["tail:overall"]["run"] == pytest.approx(tail_a)
    assert m["oof_auroc:macro"]["verdict"] == "win" and m["cas"]["verdict"] == "win"
    assert m["oof_auroc:macro"]["ci"][0] > 0
    # the same comparison the other way round is a loss; a run against itself no difference
    back = paired_comparison(b, a, labels, {"Cardiomegaly": 0.5, "Pleural Effusion": 0.5}, None, oof, 400)
    assert back["metrics"]["oof_auroc:macro"]["verdict"] == "loss"
    same = paired_comparison(a, a, labels, {"Cardiomegaly": 0.5}, None, oof, 200)["metrics"]
    assert same["oof_auroc:macro"]["ci"] == [0.0, 0.0] and same["cas"]["verdict"] == "no difference"
    assert verdict([0.01, 0.2], 1) == "win" and verdict([-0.2, -0.01], -1) == "win"
    assert verdict([-0.05, 0.2], 1) == "no difference"


def test_pairing_narrows_the_interval_of_a_difference():
    """Paired resampling cancels what the two runs share (the same label sets and noise)."""
    a, b, _ = _runs()
    labels = ["Cardiomegaly", "Pleural Effusion"]
    paired = paired_comparison(a, b, labels, {}, None, None, 400)["metrics"]["cas"]["ci"]
    shuffled = RunScores(b.cas, b.label_sets, [(*k, "other") for k in b.keys], b.oof_prob)
    unpaired = paired_comparison(a, shuffled, labels, {}, None, None, 400)
    assert unpaired["paired"] is False
    ci = unpaired["metrics"]["cas"]["ci"]
    assert (paired[1] - paired[0]) < 0.5 * (ci[1] - ci[0])


def test_threshold_noise_widens_the_tail_interval():
    """A threshold that is the 5 % quantile of 20 real images moves a lot when those images are
    redrawn; an interval over the generated images alone ignores that and is too narrow."""
    rng = np.random.default_rng(1)
    real = RealScores(rng.normal(0.6, 0.1, 20), [["Cardiomegaly"]] * 20, 0.05)
    threshold = float(np.quantile(real.cas, 0.05))
    n = 600
    gen = RunScores(
        threshold + rng.normal(0.05, 0.05, n), [["Cardiomegaly"]] * n, [(str(i),) for i in range(n)]
    )
    thresholds = {"Cardiomegaly": threshold}
    without = run_intervals(gen, ["Cardiomegaly"], thresholds, None, n_boot=500)["tail:overall"]
    with_noise = run_intervals(gen, ["Cardiomegaly"], thresholds, real, n_boot=500)["tail:overall"]
    assert with_noise["value"] == without["value"] == pytest.approx(np.mean(gen.cas < threshold))
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert width(with_noise) > 3 * width(without)
    # the binomial-only interval is about the Wilson width; the widened one contains it
    assert with_noise["ci"][0] <= without["ci"][0] and with_noise["ci"][1] >= without["ci"][1]


def test_pooling_seeds_averages_the_differences_and_narrows_the_ci():
    labels = ["Cardiomegaly", "Pleural Effusion"]
    comps = []
    for seed in range(3):
        a, b, _ = _runs(seed=seed)
        comps.append(paired_comparison(a, b, labels, {}, None, None, 300, seed=seed, keep_replicates=True))
    pooled = pool_comparisons(comps)
    diffs = [c["metrics"]["cas"]["difference"] for c in comps]
    assert pooled["cas"]["difference"] == pytest.approx(np.mean(diffs))
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(pooled["cas"]["ci"]) < min(width(c["metrics"]["cas"]["ci"]) for c in comps)
    assert pooled["cas"]["verdict"] == "win" and pooled["cas"]["experiments"] == 3


def test_pixel_ascent_raises_the_reward_far_more_than_the_independent_classifier():
    """Hacking the shipped reward VLM by pixel ascent from real 'No Finding' phantoms toward
    'Cardiomegaly': its pathology fidelity rises, the out-of-family classifier barely moves."""
    from craft_ray.cas.probe import ProbeSettings, probe_label, vlm_reward
    from craft_ray.models import build_vlm
    from craft_ray.models.classifier import resolve_classifier
    from craft_ray.pretrain.phantom_tensors import make_phantom_set

    data = make_phantom_set("chest", 60, seed=4321)
    picks = [i for i, ls in enumerate(data.label_sets) if ls == ["No Finding"]][:4]
    images = data.floats(torch.tensor(picks))[:, :1]  # greyscale, as the dataset stores chest images
    reward = vlm_reward(build_vlm("phantom:chest"), "chexpert", LABELS)
    clf = resolve_classifier("phantom:chest")
    result = probe_label(
        reward, clf.predict_proba, clf.labels, images, "Cardiomegaly", ProbeSettings(steps=15, eps=0.1)
    )
    assert result.reward_gain > 0.1
    assert result.classifier_gain < 0.2 * result.reward_gain
    assert result.pixel_change <= 0.1 + 1e-6


def test_the_reward_sees_greyscale_images_as_evaluation_stores_them():
    """Training decodes 3 channels; for chest the reward must score PIL's greyscale of them (what
    evaluation writes), differentiably, so both score the same image."""
    from craft_ray.cas.channels import to_modality_channels

    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    grey = to_modality_channels(rgb, 1)
    assert grey.shape == (2, 1, 16, 16)
    as_pil = [
        np.asarray(
            Image.fromarray((x.detach().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).convert("L")
        )
        for x in rgb
    ]
    assert np.abs(grey.detach()[:, 0].numpy() * 255 - np.stack(as_pil)).max() <= 1.0
    grey.sum().backward()
    assert rgb.grad is not None and torch.all(rgb.grad > 0)
    assert to_modality_channels(rgb, 3) is rgb


def test_calibration_keeps_the_real_scores_and_old_files_still_load(phantom_root, tmp_path):
    import json

    from craft_ray.cas import Calibration, EvaluatorSpec, calibrate

    cal = calibrate(EvaluatorSpec("chexpert", LABELS, "tiny"), str(phantom_root / "chest"), "val")
    assert cal.version == 2 and len(cal.real["cas"]) == len(cal.real["labels"]) > 0
    for label, tau in cal.thresholds.items():
        values = [c for c, ls in zip(cal.real["cas"], cal.real["labels"], strict=True) if label in ls]
        assert tau == pytest.approx(np.quantile(values, cal.q))
    cal.save(tmp_path / "v2.json")
    old = json.loads((tmp_path / "v2.json").read_text())
    old.pop("real")
    old["version"] = 1
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert Calibration.load(tmp_path / "v1.json").real is None  # intervals then say they omit threshold noise


def test_interval_summary_of_nan_free_inputs_is_finite():
    a, _, _ = _runs(n=50)
    out = run_intervals(
        a,
        ["Cardiomegaly", "Pleural Effusion"],
        {"Cardiomegaly": 0.6},
        None,
        OOFSpec(["Cardiomegaly", "Pleural Effusion"], True),
        n_boot=100,
    )
    assert all(math.isfinite(v["value"]) for k, v in out.items() if not k.startswith("tail:Pleural"))


def test_a_difference_that_rounds_to_zero_is_printed_without_a_minus_sign():
    from craft_ray.report.tables import num, with_ci

    assert with_ci(-0.0001, [-0.0004, -0.00002]) == "0.000 [0.000, 0.000]"
    assert with_ci(-0.04, [-0.06, -0.0001], digits=1) == "0.0 [-0.1, 0.0]"
    assert num(-0.0004) == "0.000" and num(-0.0006) == "-0.001"
