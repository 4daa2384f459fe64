"""Evaluation metrics and the CNN classifier on constructed inputs with known answers (no Ray)."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import torch

from craft_ray.data.reading import read_table
from craft_ray.errors import ConfigError, EvaluationError, ModelError
from craft_ray.evaluation.memorisation import pixel_embedding
from craft_ray.evaluation.metrics import memorisation_table, tail_reduction, tail_table
from craft_ray.evaluation.plan import image_seed, make_plan
from craft_ray.evaluation.stats import auroc, bootstrap_difference, bootstrap_summary, share_interval
from craft_ray.models.classifier import Classifier, ClassifierCard, fit_classifier, targets_for

Z95 = 1.959963984540054


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster, and far faster when other jobs load the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval, written out from its formula."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (37, 250)])
def test_share_interval_is_the_wilson_score_interval(k, n):
    assert share_interval(k, n) == pytest.approx(wilson(k, n), abs=1e-9)
    assert all(math.isnan(x) for x in share_interval(0, 0))


def test_bootstrap_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        sample = rng.normal(0.3, 1.0, size=60)
        lo, hi = bootstrap_summary(sample, n_boot=400, seed=t)["mean_ci"]
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / trials <= 0.99, covered


def test_bootstrap_summary_reports_known_quantiles():
    values = np.arange(101, dtype=float)  # quantile q is exactly 100 q
    summary = bootstrap_summary(values, n_boot=200)
    assert summary["mean"] == 50.0 and summary["n"] == 101
    assert summary["quantiles"]["0.05"]["value"] == pytest.approx(5.0)
    assert summary["quantiles"]["0.5"]["value"] == pytest.approx(50.0)
    lo, hi = summary["mean_ci"]
    assert lo < 50.0 < hi


def test_tail_share_per_label_and_overall():
    thresholds = {"A": 0.5, "B": 0.3}
    cas = [0.4, 0.6, 0.2, 0.45]
    sets = [["A"], ["A"], ["B"], ["A", "B"]]
    table = tail_table(cas, sets, thresholds, ["A", "B"], 0.95)
    # A: 0.4 and 0.45 are below 0.5, 0.6 is not -> 2 of 3
    assert (table["A"]["below"], table["A"]["n"]) == (2, 3)
    assert table["A"]["ci"] == pytest.approx(list(wilson(2, 3)))
    # B: 0.2 and 0.45 against 0.3 -> 1 of 2
    assert (table["B"]["below"], table["B"]["n"]) == (1, 2)
    # overall: an [A, B] image is in the tail only below the lowest threshold (0.3): 0.45 is not
    assert (table["overall"]["below"], table["overall"]["n"]) == (2, 4)


def test_tail_reduction_points_and_relative_percent():
    thresholds = {"A": 0.5}
    sets = [["A"]] * 8
    baseline = [0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.9, 0.9]  # 6 of 8 below
    run = [0.9, 0.2, 0.9, 0.4, 0.9, 0.9, 0.9, 0.9]  # 2 of 8 below
    out = tail_reduction((run, sets), (baseline, sets), thresholds, ["A"], True, 500, 0.95, 0)
    row = out["A"]
    assert row["baseline_share"] == 0.75 and row["run_share"] == 0.25
    assert row["points"] == pytest.approx(50.0)
    assert row["relative_pct"] == pytest.approx(100 * 0.5 / 0.75)
    lo, hi = row["points_ci"]
    assert 0 < lo <= 50.0 <= hi <= 100  # paired: every resample keeps run <= baseline here
    worse = tail_reduction((baseline, sets), (run, sets), thresholds, ["A"], True, 500, 0.95, 0)["A"]
    assert worse["points"] == pytest.approx(-50.0) and worse["relative_pct"] == pytest.approx(-200.0)


def test_paired_bootstrap_is_tighter_than_unpaired_for_correlated_runs():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 200)
    run = base + 0.1 + rng.normal(0, 0.05, 200)  # the same images, shifted a little
    paired = bootstrap_difference(base, run, True, 500, 0.95, 0)  # points = mean(run) - mean(base)
    unpaired = bootstrap_difference(base, run, False, 500, 0.95, 0)
    assert paired["points"] == pytest.approx(unpaired["points"]) == pytest.approx(run.mean() - base.mean())
    width = lambda d: d["points_ci"][1] - d["points_ci"][0]  # noqa: E731
    assert paired["points_ci"][0] > 0 and width(paired) < width(unpaired) / 5


def test_auroc_known_values():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)  # ties count one half
    assert auroc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0 and auroc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 8, 8, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)


def test_memorisation_finds_a_planted_copy_and_not_a_near_miss():
    real = _smooth_images(20, 0)
    near_miss = (0.55 * real[7] + 0.45 * _smooth_images(1, 9)[0]).clamp(0, 1)
    fresh = _smooth_images(1, 99)[0]
    generated = torch.stack([fresh, real[7].clone(), near_miss])
    real_emb, gen_emb = pixel_embedding(real).numpy(), pixel_embedding(generated).numpy()
    ids = [f"real-{i}" for i in range(20)]
    out = memorisation_table(gen_emb, real_emb, ["fresh", "copy", "near"], ids, 0.95, 3, 0.95, heldout=None)
    assert out["copies"] == 1 and out["n"] == 3
    top = out["top_pairs"][0]
    assert top == {"generated": "copy", "real": "real-7", "similarity": pytest.approx(1.0, abs=1e-5)}
    near = next(p for p in out["top_pairs"] if p["generated"] == "near")
    assert (
        near["real"] == "real-7" and 0.5 < near["similarity"] < 0.95
    )  # closest to the original, yet no copy
    assert out["threshold_source"] == "fixed" and "heldout" not in out
    # held-out real images, counted at the same fixed threshold: none is a copy
    held = pixel_embedding(_smooth_images(10, 5)).numpy()
    with_ref = memorisation_table(
        gen_emb, real_emb, ["fresh", "copy", "near"], ids, 0.95, 3, 0.95, heldout=held
    )
    assert (with_ref["heldout"]["n"], with_ref["heldout"]["copies"]) == (10, 0)
    assert with_ref["heldout"]["ci"] == pytest.approx(wilson(0, 10), abs=1e-9)


def _modality_images(n: int, seed: int) -> torch.Tensor:
    """Images of one 'modality': a shared anatomy plus a smaller per-image variation, so real images
    resemble their nearest training image closely (thumbnail correlation about 0.97, as chest
    phantoms' do) without being copies of it."""
    anatomy = _smooth_images(1, 1234)
    return (0.8 * anatomy + 0.2 * _smooth_images(n, seed)).clamp(0, 1)


def hand_quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile with linear interpolation between order statistics, written out."""
    v = np.sort(values)
    pos = q * (len(v) - 1)
    lo = int(math.floor(pos))
    return float(v[lo] + (pos - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo]))


def test_calibrated_copy_threshold_flags_new_real_images_at_the_heldout_rate_and_every_copy():
    train, heldout, fresh = _modality_images(300, 0), _modality_images(300, 1), _modality_images(400, 2)
    emb = {k: pixel_embedding(v).numpy() for k, v in (("train", train), ("held", heldout), ("fresh", fresh))}
    copies = train[::6]  # 50 training images, generated "again"
    copy_emb = pixel_embedding(copies).numpy()
    ids = [f"real-{i}" for i in range(300)]

    def table(generated, threshold):
        names = [f"gen-{i}" for i in range(len(generated))]
        return memorisation_table(
            generated, emb["train"], names, ids, threshold, 3, 0.95, emb["held"], q=0.95
        )

    # the reference threshold by hand: brute-force nearest training image, then the order statistic
    cos = (emb["held"] / np.linalg.norm(emb["held"], axis=1, keepdims=True)) @ (
        emb["train"] / np.linalg.norm(emb["train"], axis=1, keepdims=True)
    ).T
    nearest = cos.max(axis=1)
    assert np.median(nearest) > 0.95  # images of one modality: a fixed 0.95 calls most real images copies
    new = table(emb["fresh"], None)
    assert new["threshold_source"] == "auto" and new["threshold"] == pytest.approx(
        hand_quantile(nearest, 0.95)
    )
    lo, hi = new["threshold_ci"]
    assert lo < new["threshold"] < hi
    held = new["heldout"]
    assert held["n"] == 300 and 0.02 <= held["share"] <= 0.09  # leave-one-out: about 1 - q
    # new images of the real distribution: flagged about as often as held-out ones ...
    assert abs(new["share"] - held["share"]) < 0.04 and new["ci"][0] <= held["share"] <= new["ci"][1]
    # ... and the interval carries the threshold's noise: wider than the Wilson interval alone
    plain = wilson(new["copies"], new["n"])
    assert new["ci"][0] <= plain[0] and new["ci"][1] > plain[1]
    # exact copies of training images: every one
    copied = table(copy_emb, None)
    assert (copied["copies"], copied["n"]) == (50, 50) and copied["ci"][1] == 1.0
    # the old fixed 0.95: most new real-like images were "copies"
    old = table(emb["fresh"], 0.95)
    assert old["share"] > 0.5 and old["threshold_source"] == "fixed"
    assert old["heldout"]["share"] > 0.5  # and so were the held-out real images
    with pytest.raises(ValueError, match="held-out real images"):
        memorisation_table(emb["fresh"], emb["train"], ["g"] * 400, ids, None, 3, 0.95, heldout=None)


def _two_class_images(n: int, seed: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Class L: bright left half; class R: bright right half; plus noise."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.3 + 0.1 * torch.rand(n, 1, 16, 16, generator=gen)
    sets = []
    for i in range(n):
        side = i % 2
        images[i, 0, :, side * 8 : side * 8 + 8] += 0.5
        sets.append(["L"] if side == 0 else ["R"])
    return images.clamp(0, 1), sets


@pytest.mark.parametrize("multilabel", [False, True])
def test_classifier_separates_separable_data_and_is_at_chance_on_shuffled_labels(multilabel, tmp_path):
    labels = ["L", "R"]
    train, train_sets = _two_class_images(64, 0)
    test, test_sets = _two_class_images(200, 1)

    def fit(sets):
        card = ClassifierCard("isic", labels, multilabel, 1, 16, 8)
        return fit_classifier(train, targets_for(sets, labels), card, epochs=8, batch_size=16, seed=0)

    clf = fit(train_sets)
    probs = clf.predict_proba(test)
    truth = np.array([s == ["L"] for s in test_sets])
    assert auroc(truth, probs[:, 0]) > 0.97
    # shuffled labels: independent of the images in training and in testing -> chance
    rng = np.random.default_rng(3)
    noise_clf = fit([[labels[k]] for k in rng.permutation([0, 1] * 32)])
    random_truth = rng.permutation([True, False] * 100)
    assert abs(auroc(random_truth, noise_clf.predict_proba(test)[:, 0]) - 0.5) < 0.12
    clf.save(tmp_path / "clf")
    again = Classifier.load(tmp_path / "clf")
    np.testing.assert_allclose(again.predict_proba(test), probs, atol=1e-6)
    assert again.card.multilabel == multilabel and again.labels == labels


def test_classifier_load_errors(tmp_path):
    with pytest.raises(ModelError, match="not a saved classifier"):
        Classifier.load(tmp_path)
    card = ClassifierCard("isic", ["L", "R"], False, 1, 16, 8)
    with pytest.raises(ModelError, match="exactly one label"):
        fit_classifier(torch.rand(4, 1, 16, 16), torch.ones(4, 2), card, epochs=1)


def test_plan_draws_label_sets_from_the_real_distribution():
    real = [["A", "B"]] * 30 + [["A"]] * 10 + [["C"]] * 5
    plan = make_plan(real, ["A", "B", "C", "D"], 40, 0, 16, 8)
    by_target: dict[str, list[list[str]]] = {}
    for row in plan.rows:
        by_target.setdefault(row.target_label, []).append(row.labels)
    assert {k: len(v) for k, v in by_target.items()} == {"A": 40, "B": 40, "C": 40, "D": 40}
    assert all("A" in s for s in by_target["A"]) and all(s == ["A", "B"] for s in by_target["B"])
    share_ab = sum(s == ["A", "B"] for s in by_target["A"]) / 40  # 30 of the 40 real A images have B
    assert 0.55 < share_ab < 0.95
    assert by_target["D"] == [["D"]] * 40 and any("'D'" in note for note in plan.notes)
    again = make_plan(real, ["A", "B", "C", "D"], 40, 0, 16, 8)
    assert [r.seed for r in again.rows] == [r.seed for r in plan.rows]
    other = make_plan(real, ["A", "B", "C", "D"], 40, 1, 16, 8)
    assert [r.seed for r in other.rows] != [r.seed for r in plan.rows]
    assert len({r.seed for r in plan.rows}) == len(plan.rows)
    assert plan.n_shards == 10 and [len(g) for g in plan.groups([0, 9])] == [8, 8, 8, 8]


def test_selection_and_final_evaluation_draw_disjoint_image_seeds(tmp_path):
    """Sweep validation (selection) and `craft evaluate` never generate from the same seed, for any
    seed value; the `evaluate` stream is the one evaluations always had."""
    from craft_ray.config import validate_config
    from craft_ray.data.phantoms import make_phantom_dataset
    from craft_ray.tune.spec import ValidationConfig
    from craft_ray.tune.validation import validation_plan

    for seed in (0, 1, 7):
        evaluate = {image_seed(seed, i) for i in range(3000)}
        validate = {image_seed(seed, i, "validate") for i in range(3000)}
        assert len(evaluate) == len(validate) == 3000 and not evaluate & validate
        assert max(evaluate) < 2**31 <= min(validate)
    # the evaluate stream, computed by hand from its SeedSequence entropy (unchanged)
    hand = int(np.random.SeedSequence([5, 11, 3]).generate_state(1)[0]) & 0x7FFFFFFF
    assert image_seed(5, 3) == hand
    with pytest.raises(EvaluationError, match="unknown seed stream 'test'"):
        image_seed(0, 0, "test")
    # through the sweep's validation plan and the evaluation's plan, on the same data and seed
    make_phantom_dataset("chest", 40, tmp_path / "chest", size=16, seed=3)
    cfg = validate_config(
        {"name": "x", "method": "craft", "dataset": {"name": "chexpert", "uri": str(tmp_path / "chest")}}
    )
    validation = ValidationConfig(n_per_label=30, seed=0)
    selection = {r.seed for r in validation_plan(cfg, validation).rows}
    labels = list(cfg.dataset.label_space)
    for split in ("val", "test"):
        sets = read_table(cfg.dataset.uri, split, columns=["labels"]).column("labels").to_pylist()
        final = {r.seed for r in make_plan(sets, labels, 30, 0, 64, 8).rows}
        assert len(final) == len(selection) == 30 * len(labels) and not final & selection


def test_evaluation_config_is_validated():
    from craft_ray.config import validate_config

    base = {"name": "x", "method": "craft", "dataset": {"name": "chexpert", "uri": "d"}}
    cfg = validate_config({**base, "evaluation": {"n_per_label": 4, "batch_size": 2, "shard_size": 8}})
    assert cfg.evaluation.n_per_label == 4 and cfg.evaluation.weights.as_dict()["realism"] == 1.0
    with pytest.raises(ConfigError, match="evaluation: shard_size .* multiple of batch_size"):
        validate_config({**base, "evaluation": {"batch_size": 3, "shard_size": 8}})
    with pytest.raises(ConfigError, match="evaluation.copy_threshold"):
        validate_config({**base, "evaluation": {"copy_threshold": 1.5}})
    with pytest.raises(ConfigError, match="evaluation.n_per_label"):
        validate_config({**base, "evaluation": {"n_per_label": 0}})


def test_actor_pools_fit_the_cluster_and_share_gpus():
    from craft_ray.config import EvaluationConfig
    from craft_ray.evaluation.pipeline import plan_resources

    laptop = plan_resources(EvaluationConfig(generate={"num_cpus": 2}), {"CPU": 2.0})
    assert sum(p.actors * p.num_cpus for p in laptop.values()) <= 2.0  # every pool can start
    assert laptop["generate"].threads == 2 and laptop["score"].threads == 1
    assert all(p.num_gpus == 0 for p in laptop.values())
    gpus = plan_resources(EvaluationConfig(), {"CPU": 32.0, "GPU": 4.0})
    assert [gpus[s].actors for s in ("generate", "score", "classify")] == [4, 4, 4]
    assert sum(gpus[s].num_gpus * gpus[s].actors for s in gpus) == 4.0  # 0.5 + 0.25 + 0.25 per GPU
    assert gpus["generate"].num_cpus == 1.0  # nothing scaled when it fits
    fixed = plan_resources(EvaluationConfig(score={"actors": 2, "num_gpus": 0}), {"CPU": 32.0, "GPU": 1.0})
    assert fixed["score"].actors == 2 and fixed["score"].num_gpus == 0


def test_out_of_family_accuracy_on_the_conditioned_labels():
    from craft_ray.evaluation.metrics import label_accuracy, out_of_family_table

    labels = ["A", "B", "C"]
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.4], [0.4, 0.4, 0.1]])
    sets = [["A"], ["B", "C"], ["C"]]
    # multi-label: per image, the share of evaluated labels decided right at P = 0.5, by hand
    multi = label_accuracy(probs, sets, labels, labels, multilabel=True)
    assert multi.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    # only the evaluated labels count
    only_a = label_accuracy(probs, sets, labels, ["A"], multilabel=True)
    assert only_a.tolist() == [1.0, 1.0, 1.0]
    # single-label: top-1 class against the conditioned label
    single = label_accuracy(probs, sets[:1] + [["B"], ["C"]], labels, labels, multilabel=False)
    assert single.tolist() == [1.0, 1.0, 0.0]  # the third image's top class is A (tie A/B -> first)
    table = out_of_family_table(
        probs, [0.5, 0.5, 0.5], sets, labels, labels, n_boot=100, level=0.95, seed=0, multilabel=True
    )
    assert table["accuracy"]["mean"] == pytest.approx(2 / 3) and "0.5" in table["accuracy"]["kind"]


def test_a_missing_downstream_auroc_says_why(tmp_path):
    """`craft evaluate` and `craft report` put the reason for a '-' AUROC under the table."""
    from craft_ray.report.build import Evaluated, downstream_section
    from craft_ray.report.tables import downstream_table, to_markdown

    nan = float("nan")
    per_label = {"Cardiomegaly": 0.75, "Edema": nan, "Fracture": nan}
    downstream = {
        "n_generated": 8,
        "n_real": 8,
        "n_test": 2,
        "test_positives": {"Cardiomegaly": 1, "Edema": 0, "Fracture": 2},
        "generated": {"per_label": per_label, "macro": 0.75},
        "real": {"per_label": per_label, "macro": 0.75},
    }
    note = downstream_table({"downstream": downstream, "split": "test"}).note
    need = "an AUROC needs at least one test image with the label and one without (at least 2 images)"
    assert f"no AUROC for Edema: of the 2 test images none has it; {need}" in note
    assert f"no AUROC for Fracture: of the 2 test images all 2 have it; {need}" in note
    assert "Cardiomegaly" not in note
    tiny = {
        **downstream,
        "n_test": 1,
        "generated": {"per_label": dict.fromkeys(per_label, nan), "macro": nan},
    }
    run = Evaluated(
        tmp_path, {"model": "r1", "dataset": "chexpert", "downstream": tiny, "split": "test"}, {}, None
    )
    markdown = downstream_section([run], tmp_path)
    assert "r1: no AUROC: the test split has 1 image(s) with these labels" in markdown
    complete = {**downstream, "generated": {"per_label": {"Cardiomegaly": 0.7}, "macro": 0.7}}
    assert "no AUROC" not in to_markdown(downstream_table({"downstream": complete, "split": "test"}))


def test_digests_follow_content_not_names(tmp_path):
    from craft_ray.evaluation.digests import Digests
    from craft_ray.models.phantom import phantom_vlm_dir

    model = tmp_path / "my-vlm"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    (model / "config.json").write_text("{}")
    (model / "README.md").write_text("a card")
    digests = Digests()
    first = digests.model(str(model), "vlm")
    (model / "README.md").write_text("a longer card")  # docs beside the weights do not count
    assert Digests().model(str(model), "vlm") == first
    (model / "model.safetensors").write_bytes(b"weights v2")  # retrained under the same name
    assert Digests().model(str(model), "vlm") != first
    # presets are built in code, hub ids are pinned by their revision, phantom names by their files
    assert digests.model("tiny", "diffusion") == "preset:tiny"
    assert digests.model("org/model", "diffusion", "abc123") == "hub:org/model@abc123"
    assert digests.model(None, "mllm") is None
    shipped = digests.model("phantom:chest", "vlm")
    assert (
        shipped.startswith("phantom:")
        and shipped
        == f"phantom:{Digests().directory(phantom_vlm_dir('phantom:chest'), ('.md', '.png', '.jpg', '.jpeg'))}"
    )
    # a file is read once per Digests: asked again with the same (path, size, mtime), it is not
    # read again (here its bytes changed behind the cache's back, size and mtime kept)
    weights = model / "model.safetensors"
    assert digests.file(weights) == hashlib.sha256(b"weights v2").hexdigest()[:16]
    stamp = weights.stat().st_mtime_ns
    weights.write_bytes(b"weights v3")
    os.utime(weights, ns=(stamp, stamp))
    assert digests.file(weights) == hashlib.sha256(b"weights v2").hexdigest()[:16]
    assert Digests().file(weights) == hashlib.sha256(b"weights v3").hexdigest()[:16]


def test_shards_of_another_plan_are_not_mixed_in(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from craft_ray.evaluation.store import PLAN_KEY, EvalStore

    store = EvalStore(tmp_path / "eval")
    store.start({"identity": {}}, fresh=True)
    rows = pa.table({"index": [0, 1]})
    pq.write_table(rows.replace_schema_metadata({PLAN_KEY: b"aaaa"}), store.shard_path(0))
    store.check_shards("aaaa")  # the same plan: continued
    with pytest.raises(
        EvaluationError, match=r"shard-00000.parquet was generated for another plan \(digest aaaa"
    ):
        store.check_shards("bbbb")
    pq.write_table(rows, store.shard_path(1))  # a shard that records no plan (older craft-ray)
    with pytest.raises(EvaluationError, match=r"shard-00001.parquet .* \(digest none"):
        store.check_shards("aaaa")
