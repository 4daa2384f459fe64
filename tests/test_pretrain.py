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
from craft_ray.models.phantom import diffusion_shipped, shipped_vlms
from craft_ray.pretrain.gates import ModalityRule, auroc, diffusion_samples, vlm_gate, wrong_label_set
from craft_ray.pretrain.phantom_tensors import make_phantom_set

FRESH_SEED = 4242  # held out from every training run (VLM 200/201, base 100, demo 0, gates 999)


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
    monkeypatch.setattr("craft_ray.models.phantom.assets_root", lambda: tmp_path)
    with pytest.raises(ModelError, match="no shipped weights for 'phantom:chest'.*craft pretrain vlm"):
        build_vlm("phantom:chest")
    with pytest.raises(ModelError, match="craft pretrain diffusion"):
        build_diffusion("phantom")


def test_modality_rule_recognises_real_phantoms():
    rule = ModalityRule(n_per_modality=60, seed=FRESH_SEED)
    for modality in MODALITIES:
        predicted = rule.predict(make_phantom_set(modality, 40, FRESH_SEED + 1).floats())
        assert np.mean([p == modality for p in predicted]) >= 0.9, modality


@pytest.mark.skipif(not diffusion_shipped(), reason="no phantom diffusion base shipped yet (its gate failed)")
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
