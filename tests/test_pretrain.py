"""The shipped phantom models: each loads by its name and meets its gate on fresh held-out
phantoms; `craft pretrain vlm` runs end to end at a tiny size and writes a loadable model + card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from craft_ray.cas import EvaluatorSpec, build_evaluator
from craft_ray.config import validate_config
from craft_ray.errors import ConfigError, ModelError
from craft_ray.knowledge.labels import MODALITIES, get_dataset
from craft_ray.models import build_diffusion, build_vlm
from craft_ray.models.classifier import resolve_classifier
from craft_ray.models.phantom import diffusion_shipped, shipped_classifiers, shipped_vlms
from craft_ray.pretrain.classifier import classifier_gate
from craft_ray.pretrain.gates import ModalityRule, auroc, diffusion_samples, vlm_gate, wrong_label_set
from craft_ray.pretrain.phantom_tensors import make_phantom_set

# held out from every training run (VLM 200/201, base 100, classifier 300, demo 0, gates 999)
FRESH_SEED = 4242


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, targets = rng.normal(size=40).round(1), rng.integers(0, 2, 40)
    pos, neg = scores[targets == 1], scores[targets == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(scores, targets) == pytest.approx(pairwise)


@pytest.mark.parametrize("dataset", ["chexpert", "isic", "fundus", "histopath"])
def test_wrong_label_sets_are_valid_and_wrong(dataset):
    spec = get_dataset(dataset)
    data = make_phantom_set(spec.modality, 60, FRESH_SEED)
    rng = np.random.default_rng(0)
    for labels in data.label_sets:
        wrong = wrong_label_set(spec, labels, rng)
        assert wrong != labels and set(wrong) <= set(spec.phantom_labels)
        if not spec.multilabel:
            assert len(wrong) == 1
        else:  # one finding flipped; 'No Finding' exactly when no pathology
            pathologies = set(wrong) - {"No Finding", "Support Devices"}
            assert ("No Finding" in wrong) == (not pathologies)
            changed = (set(wrong) ^ set(labels)) - {"No Finding"}
            assert len(changed) == 1


@pytest.mark.parametrize("modality", shipped_vlms())
def test_shipped_vlm_meets_its_gate_on_fresh_phantoms(modality):
    scorer = build_vlm(f"phantom:{modality}")
    metrics = vlm_gate(scorer, modality, n=240, seed=FRESH_SEED)
    assert metrics["macro_auroc"] >= 0.90, metrics
    assert metrics["fidelity_win_rate"] >= 0.90, metrics


def test_chest_vlm_is_shipped_and_named_by_phantom_in_configs_and_specs():
    assert "chest" in shipped_vlms()
    cfg = validate_config(
        {
            "name": "x",
            "method": "craft",
            "dataset": {"name": "chexpert", "uri": "d"},
            "model": {"vlm": "phantom"},
        }
    )
    assert cfg.model.vlm == "phantom:chest"
    spec = EvaluatorSpec("chexpert", ["Cardiomegaly", "Pleural Effusion"], vlm="phantom")
    assert spec.vlm == "phantom:chest"
    evaluator = build_evaluator(spec)
    data = make_phantom_set("chest", 64, FRESH_SEED)
    scores = evaluator.score(data.floats(), [["Cardiomegaly"]] * 64, evaluate=True).dims["pathology"]
    has_cardiomegaly = torch.tensor(["Cardiomegaly" in s for s in data.label_sets])
    # asking for cardiomegaly scores the images that show it higher than those that do not
    assert scores[has_cardiomegaly].mean() > scores[~has_cardiomegaly].mean() + 0.2


@pytest.mark.parametrize("modality", shipped_classifiers())
def test_shipped_classifier_meets_its_gate_on_fresh_phantoms(modality):
    clf = resolve_classifier(f"phantom:{modality}")
    assert clf.card.family == "cnn" and clf.card.trained_on["data_seed"] == 300
    metrics = classifier_gate(clf, modality, n=240, seed=FRESH_SEED)
    assert min(metrics["auroc"].values()) >= 0.95, metrics


def test_chest_classifier_is_shipped_and_named_by_phantom_in_configs():
    assert "chest" in shipped_classifiers()
    cfg = validate_config(
        {
            "name": "x",
            "method": "craft",
            "dataset": {"name": "chexpert", "uri": "d"},
            "evaluation": {"classifier": "phantom"},
        }
    )
    assert cfg.evaluation.classifier == "phantom:chest"
    assert cfg.resolved().evaluation.classifier == "phantom:chest"  # a name, not made a path
    clf = resolve_classifier(cfg.evaluation.classifier)
    assert clf.card.dataset == "chexpert" and set(clf.labels) == set(get_dataset("chexpert").phantom_labels)
    # the evaluator sees what the phantoms show: images with cardiomegaly score higher on it
    data = make_phantom_set("chest", 64, FRESH_SEED)
    p = clf.predict_proba(data.floats())[:, clf.labels.index("Cardiomegaly")]
    has = np.array(["Cardiomegaly" in s for s in data.label_sets])
    assert p[has].mean() > p[~has].mean() + 0.5


def test_phantom_names_fail_clearly(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="needs a modality"):
        build_vlm("phantom")
    with pytest.raises(ModelError, match="unknown phantom VLM"):
        build_vlm("phantom:xray")
    with pytest.raises(ConfigError, match="modality 'chest'"):
        validate_config(
            {
                "name": "x",
                "method": "craft",
                "dataset": {"name": "chexpert", "uri": "d"},
                "model": {"vlm": "phantom:derm"},
            }
        )
    with pytest.raises(ConfigError, match="evaluation.classifier 'phantom:histo'.*modality 'chest'"):
        validate_config(
            {
                "name": "x",
                "method": "craft",
                "dataset": {"name": "chexpert", "uri": "d"},
                "evaluation": {"classifier": "phantom:histo"},
            }
        )
    with pytest.raises(ModelError, match="classifier 'phantom' needs a modality"):
        resolve_classifier("phantom")
    monkeypatch.setattr("craft_ray.models.phantom.assets_root", lambda: tmp_path)
    with pytest.raises(ModelError, match="no shipped VLM weights for 'phantom:chest'.*craft pretrain vlm"):
        build_vlm("phantom:chest")
    with pytest.raises(ModelError, match="no shipped classifier weights.*craft pretrain classifier"):
        resolve_classifier("phantom:chest")
    with pytest.raises(ModelError, match="craft pretrain diffusion"):
        build_diffusion("phantom")


def test_modality_rule_recognises_real_phantoms():
    rule = ModalityRule(n_per_modality=60, seed=FRESH_SEED)
    for modality in MODALITIES:
        predicted = rule.predict(make_phantom_set(modality, 40, FRESH_SEED + 1).floats())
        assert np.mean([p == modality for p in predicted]) >= 0.9, modality


@pytest.mark.skipif(
    not diffusion_shipped(), reason="no phantom diffusion base shipped yet (its training run did not finish)"
)
def test_shipped_diffusion_base_samples_each_modality():
    components = build_diffusion("phantom").freeze()
    assert components.source == "phantom" and components.vae_scale_factor == 4
    rule = ModalityRule(n_per_modality=60, seed=FRESH_SEED)
    hits = []
    for modality, spec in MODALITIES.items():
        images = diffusion_samples(components, spec.modality_phrase, 6, FRESH_SEED, steps=10)
        hits += [p == modality for p in rule.predict(images)]
    assert np.mean(hits) >= 0.9


def test_pretrain_vlm_cli_writes_a_loadable_model_and_card(tmp_path):
    from craft_ray.cli import app

    out = tmp_path / "vlm"
    args = [
        "pretrain",
        "vlm",
        "--modality",
        "derm",
        "--out",
        str(out),
        "--steps",
        "3",
        "--n-train",
        "24",
        "--n-negatives",
        "8",
        "--batch-size",
        "12",
        "--gate-n",
        "24",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["command"].startswith("craft pretrain vlm --modality derm")
    assert card["config"]["steps"] == 3 and card["gate"]["seed"] == 999
    assert set(card["gate"]["auroc"]) == set(get_dataset("isic").phantom_labels)
    scorer = build_vlm(str(out))
    assert scorer.embed_images(torch.rand(2, 3, 64, 64)).shape[0] == 2
    again = CliRunner().invoke(app, args)  # never overwrites without --overwrite
    assert again.exit_code != 0 and "overwrite" in str(again.exception or again.output)


def test_phantom_base_and_vlm_train_unchanged_in_the_loop(phantom_root, tmp_path):
    """The base's architecture (as `craft pretrain diffusion` builds and saves it; the shipped
    weights when there are any) through the training loop: LoRA via peft, DDIM with a gradient
    through the last step, VAE decode, the phantom VLM's CAS as the reward; the LoRA checkpoint
    then loads into the diffusers pipeline."""
    from craft_ray.models import load_lora_into, save_diffusion
    from craft_ray.pretrain.diffusion import DiffusionArch, build_components
    from craft_ray.train.loop import train_loop
    from craft_ray.train.session import LocalSession

    base = "phantom"
    if not diffusion_shipped():
        base = str(tmp_path / "base")
        save_diffusion(build_components(DiffusionArch(), seed=0), base)

    cfg = validate_config(
        {
            "name": "phantom-unit",
            "method": "craft",
            "dataset": {
                "name": "chexpert",
                "uri": str(phantom_root / "chest"),
                "resolution": 64,
                "labels": list(get_dataset("chexpert").phantom_labels),
            },
            "model": {"base": base, "vlm": "phantom"},
            "training": {"steps": 1, "sampler_steps": 3, "backprop_steps": 1, "checkpoint_every": 1},
        }
    )
    session = LocalSession(tmp_path / "run")
    last = train_loop(cfg, session)
    assert 0 < last["reward"] < 1 and np.isfinite(last["grad_norm"]) and last["grad_norm"] > 0
    pipe = build_diffusion(base).pipeline()
    load_lora_into(pipe, tmp_path / "run" / "checkpoint_000001" / "lora")
    image = pipe(
        "a frontal chest radiograph", num_inference_steps=2, height=64, width=64, output_type="np"
    ).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_pretrain_classifier_cli_writes_a_loadable_classifier_and_card(tmp_path):
    from craft_ray.cli import app
    from craft_ray.models.classifier import Classifier

    out = tmp_path / "clf"
    args = ["pretrain", "classifier", "--modality", "fundus", "--out", str(out)]
    args += ["--n-train", "32", "--epochs", "1", "--gate-n", "24"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["command"].startswith("craft pretrain classifier --modality fundus")
    assert card["gate"]["seed"] == 999 and card["config"]["data_seed"] == 300
    assert set(card["gate"]["auroc"]) == set(get_dataset("fundus").phantom_labels)
    assert card["seed_plan"]["out-of-family classifier (evaluator) training"] == 300
    clf = Classifier.load(out)
    probs = clf.predict_proba(torch.rand(3, 3, 64, 64))
    assert probs.shape == (3, 5) and np.allclose(probs.sum(axis=1), 1)  # single-label: softmax
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "overwrite" in str(again.exception or again.output)


def test_classifier_augmentation_blurs_and_adds_noise_reproducibly():
    from craft_ray.pretrain.classifier import make_augment

    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0  # a point: blur spreads it
    out = make_augment(1.0, 0.0)(x, torch.Generator().manual_seed(0))
    blurred = out[:, 0, 8, 8] < 0.999
    assert 0.3 < blurred.float().mean() < 0.7  # about half the images
    assert torch.allclose(out[blurred].sum(dim=(1, 2, 3)), torch.ones(int(blurred.sum())), atol=1e-5)
    assert torch.equal(out[~blurred], x[~blurred])
    noisy = make_augment(0.0, 0.05)(x, torch.Generator().manual_seed(0))
    changed = (noisy - x).abs().amax(dim=(1, 2, 3)) > 0
    assert 0.3 < changed.float().mean() < 0.7 and (noisy - x).std() < 0.1
    again = make_augment(0.0, 0.05)(x, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
