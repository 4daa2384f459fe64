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
from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import MODALITIES, get_dataset
from craft_ray.models import build_diffusion, build_vlm
from craft_ray.models.classifier import resolve_classifier
from craft_ray.models.phantom import assets_root, diffusion_shipped, shipped_classifiers, shipped_vlms
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


@pytest.mark.parametrize(
    "name", [f"{family}:{m}" for family in ("phantom", "phantom-eval") for m in shipped_vlms(family)]
)
def test_shipped_vlm_meets_its_gate_on_fresh_phantoms(name):
    """The reward VLMs and the evaluation VLMs: label AUROC and true-over-wrong fidelity."""
    modality = name.split(":")[1]
    scorer = build_vlm(name)
    metrics = vlm_gate(scorer, modality, n=240, seed=FRESH_SEED, items=False)
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


@pytest.mark.parametrize(
    ("family", "data_seed", "modality"),
    [(f, seed, m) for f, seed in (("phantom", 300), ("phantom-reward", 500)) for m in shipped_classifiers(f)],
)
def test_shipped_classifier_meets_its_gate_on_fresh_phantoms(family, data_seed, modality):
    """The out-of-family classifiers (data seed 300) and the positive control's reward classifiers
    (data seed 500: never the evaluator's training data)."""
    clf = resolve_classifier(f"{family}:{modality}")
    assert clf.card.family == "cnn" and clf.card.trained_on["data_seed"] == data_seed
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
    with pytest.raises(ModelError, match="modality 'isic'.*isic is a dataset: phantom-eval:derm"):
        build_vlm("phantom-eval:isic")
    with pytest.raises(ModelError, match="evaluation VLM.*`craft pretrain vlm --arch eval --modality fundus"):
        build_vlm("phantom-eval:fundus")
    with pytest.raises(  # the architecture that passed dermoscopy's gate
        ModelError, match="evaluation VLM.*`craft pretrain vlm --arch eval-fine80 --modality derm"
    ) as caught:
        build_vlm("phantom-eval:derm")
    # the recipe that made the shipped VLMs pass, and where to name what it makes
    assert "--steps 9000 --n-train 20000 --implausible 0.4" in str(caught.value)
    assert "`evaluation.vlm: DIR`" in str(caught.value)
    with pytest.raises(ModelError, match="`craft pretrain classifier --data-seed 500 --modality fundus"):
        resolve_classifier("phantom-reward:fundus")
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
    result = CliRunner().invoke(
        app, [*args, "--implausible", "0.5", "--augment", "--adversarial-eps", "0.01"]
    )
    assert result.exit_code == 0, result.output
    assert f"phantom:derm (reward) -> {out}" in " ".join(result.output.split())
    card = json.loads((out / "card.json").read_text())
    assert card["command"].startswith("craft pretrain vlm --modality derm")
    for option in (
        "--arch reward",
        "--data-seed 200",
        "--implausible 0.5",
        "--augment",
        "--adversarial-eps 0.01",
    ):
        assert option in card["command"]
    cfg = card["config"]
    assert cfg["steps"] == 3 and cfg["arch_name"] == "reward" and cfg["augment"]["rotate_deg"] > 0
    assert card["gate"]["seed"] == 999
    assert set(card["gate"]["auroc"]) == set(get_dataset("isic").phantom_labels)
    # the card lists every checklist item of the phantom labels and the modality, with its AUROC
    kb = load_knowledge()
    expected = {i.id for lab in get_dataset("isic").phantom_labels for i in kb.for_label("isic", lab)}
    expected |= {i.id for i in (*kb.anatomy("derm"), *kb.realism("derm"))}
    items = card["gate"]["item_gate"]
    assert set(items["items"]) == expected and "plausibility_auroc" in items
    assert all(v is None or 0.0 <= v <= 1.0 for v in items["items"].values())
    assert "| `isic:MEL:0` |" in (out / "README.md").read_text()
    assert sum(card["training"]["implausible_images"].values()) > 0
    scorer = build_vlm(str(out))
    assert scorer.embed_images(torch.rand(2, 3, 64, 64)).shape[0] == 2
    again = CliRunner().invoke(app, args)  # never overwrites without --overwrite
    assert again.exit_code != 0 and "overwrite" in str(again.exception or again.output)
    evaluator = CliRunner().invoke(app, [*args, "--arch", "eval-fine80", "--overwrite"])
    assert evaluator.exit_code == 0, evaluator.output  # an evaluator is named as the evaluation family
    assert f"phantom-eval:derm (eval-fine80) -> {out}" in " ".join(evaluator.output.split())
    assert (out / "README.md").read_text().startswith("# phantom-eval:derm (evaluation VLM)")


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


def test_vlm_trains_items_on_ground_truth_and_implausible_images_on_violated_items():
    """Item targets come from the phantoms' item ground truth (not from 'item met iff label'),
    implausible phantoms are false exactly on the items their defect violates, corrupted phantoms
    on those their corruption violates, other modalities and pictures on all."""
    from craft_ray.data.phantoms import chest
    from craft_ray.pretrain.phantom_tensors import CORRUPTION_ITEMS
    from craft_ray.pretrain.vlm import VLMPretrainConfig, _Data
    from craft_ray.pretrain.vlm_texts import VLMTexts

    spec = get_dataset("chexpert")
    texts = VLMTexts.build(spec, load_knowledge())
    cfg = VLMPretrainConfig(modality="chest", n_train=80, n_negatives=12, size=32, implausible=0.4)
    data = _Data(cfg, texts, log=lambda _: None)
    label_targets = data.truth[:, texts.item_label]
    assert (data.items != label_targets).any(dim=0).sum() >= 8  # many items differ from their label
    for row, recorded in enumerate(data.clean.items):
        for j, item in enumerate(texts.item_ids):
            expected = recorded[item] if item in recorded else bool(label_targets[row, j])
            assert bool(data.items[row, j]) == expected
        defect = data.clean.defects[row]
        violated = set(chest.DEFECTS[defect]) if defect else set()
        for j, item in enumerate(texts.modality_item_ids):
            assert bool(data.clean_section[row, j]) == (item not in violated)
    assert data.clean.implausible.sum() > 10
    corrupted = data.negative_section[-12:]
    kinds = list(CORRUPTION_ITEMS["chest"])
    for k, row in enumerate(corrupted):
        violated = set(CORRUPTION_ITEMS["chest"][kinds[k % len(kinds)]])
        assert [bool(v) for v in row] == [i not in violated for i in texts.modality_item_ids]
    assert not data.negative_section[:-12].any()  # other modalities and distractors: nothing met


def _colour_oracle():
    """A real VLMScorer whose image embedding reads only the chroma of the pixels and whose text
    embeddings put 'a greyscale radiograph' against 'a colour photograph' and every other phrase
    at one neutral point: it answers the chest's colour item and nothing else."""
    from craft_ray.models.vlm import VLMScorer

    def encode_image(pixels):
        chroma = (pixels.amax(dim=1) - pixels.amin(dim=1)).mean(dim=(1, 2))
        return torch.stack([10 * chroma, torch.ones_like(chroma)], dim=1)

    def encode_text(texts):
        side = {"a greyscale radiograph": [-1.0, 1.0], "a colour photograph": [1.0, 1.0]}
        return torch.tensor([side.get(t, [0.0, 1.0]) for t in texts])

    anchor = torch.nn.Linear(1, 1)
    return VLMScorer(
        encode_image, encode_text, torch.tensor(3.0), 32, (0, 0, 0), (1, 1, 1), [anchor], "oracle"
    )


def test_item_gate_scores_each_item_against_its_ground_truth():
    from craft_ray.pretrain.gates import MIN_ITEM_CLASS, item_gate

    metrics = item_gate(_colour_oracle(), "chest", n=240, seed=FRESH_SEED, implausible=0.3)
    items = metrics["items"]
    assert items["chest:realism:0"] == pytest.approx(1.0)  # colour found, by its own pair
    assert items["chexpert:Cardiomegaly:0"] == pytest.approx(0.5)  # a constant answer
    assert items["chexpert:Pneumothorax:4"] is None  # tension is never drawn
    assert "chexpert:Pneumothorax:4" in metrics["items_not_drawn"]
    assert metrics["plausibility_auroc_per_defect"]["colour"] == pytest.approx(1.0)
    assert metrics["plausibility_auroc_per_defect"]["missing"] == pytest.approx(0.5)
    assert 0.5 < metrics["plausibility_auroc"] < 0.7  # one defect kind of six is seen
    assert metrics["items_drawn"] == sum(v is not None for v in items.values()) and MIN_ITEM_CLASS >= 5


def test_vlm_gate_passes_needs_the_item_gates_when_measured():
    from craft_ray.pretrain.gates import vlm_gate_passes

    labels = {"macro_auroc": 0.95, "fidelity_win_rate": 0.95}
    assert vlm_gate_passes(labels)  # a card from before item ground truth
    good = {"item_auroc_min": 0.86, "plausibility_auroc": 0.91}
    assert vlm_gate_passes({**labels, "item_gate": good})
    assert not vlm_gate_passes({**labels, "item_gate": {**good, "item_auroc_min": 0.84}})
    assert not vlm_gate_passes({**labels, "item_gate": {**good, "plausibility_auroc": 0.89}})
    assert not vlm_gate_passes({**labels, "macro_auroc": 0.89, "item_gate": good})


def _shipped_vlm_dirs():
    from craft_ray.models.phantom import assets_root

    return sorted(p.name for p in assets_root().glob("vlm*") if (p / "card.json").is_file())


@pytest.mark.parametrize("name", _shipped_vlm_dirs())
def test_shipped_vlm_answers_checklist_items_on_fresh_phantoms(name):
    """Every shipped phantom VLM (reward and evaluation) meets the item gates on a seed no
    training or gate used; a VLM shipped before item-level ground truth is skipped, saying so."""
    from craft_ray.models.phantom import assets_root
    from craft_ray.pretrain.card import read_card
    from craft_ray.pretrain.gates import MIN_ITEM_AUROC, MIN_PLAUSIBILITY_AUROC, item_gate

    card = read_card(assets_root() / name)
    if "item_gate" not in card["gate"]:
        pytest.skip(
            f"{name} was trained before item-level ground truth (its card's gate has no item metrics); "
            "retrain it with `craft pretrain vlm` and ship the new weights"
        )
    modality = card["config"]["modality"]
    metrics = item_gate(build_vlm(str(assets_root() / name)), modality, n=240, seed=FRESH_SEED)
    drawn = {k: v for k, v in metrics["items"].items() if v is not None}
    assert drawn and min(drawn.values()) >= MIN_ITEM_AUROC, drawn
    assert metrics["plausibility_auroc"] >= MIN_PLAUSIBILITY_AUROC, metrics


def test_augmentation_keeps_laterality_stays_in_range_and_repeats():
    from craft_ray.pretrain.augment import Augment

    images = torch.zeros(64, 3, 32, 32)
    images[:, :, 14:18, 4:8] = 1.0  # a bright mark on the image's left
    aug = Augment(shift=0.05, rotate_deg=5.0, blur_share=0.5, blur_sigma=1.0, noise=0.02)
    out = aug(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    mass = out.mean(dim=(1, 2))  # (B, W) column profile
    left, right = mass[:, :16].sum(dim=1), mass[:, 16:].sum(dim=1)
    assert (left > 3 * right).all()  # never mirrored
    moved = Augment(shift=0.05, rotate_deg=5.0, blur_share=0, noise=0)(
        images, torch.Generator().manual_seed(0)
    )
    mass = moved.mean(dim=(1, 2))
    centre = (mass * torch.arange(32.0)).sum(dim=1) / mass.sum(dim=1)
    # the shift (at most 1.6 px) and the rotation about the centre (10.5 px away, 5 degrees: 0.1 px sideways)
    assert (centre - 5.5).abs().max() < 1.6 + 0.2 and centre.std() > 0.3
    noisy = Augment(shift=0, rotate_deg=0, blur_share=0, noise=0.02)(images, torch.Generator().manual_seed(0))
    assert 0 < (noisy - images).std() < 0.02
    assert torch.equal(out, aug(images, torch.Generator().manual_seed(0)))
    assert torch.equal(
        Augment(shift=0, rotate_deg=0, blur_share=0, noise=0)(images, torch.Generator()), images
    )


def test_adversarial_examples_ascend_the_loss_within_eps():
    from craft_ray.pretrain.augment import adversarial

    w = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.full((2, 3, 8, 8), 0.5)

    def loss(images):
        return (w * images).sum()

    fgsm = adversarial(x, loss, eps=0.01, steps=1, gen=torch.Generator().manual_seed(0))
    assert torch.allclose(fgsm, x + 0.01 * w.sign())  # one step: eps times the gradient's sign
    pgd = adversarial(x, loss, eps=0.01, steps=4, gen=torch.Generator().manual_seed(0))
    assert (pgd - x).abs().max() <= 0.01 + 1e-6 and loss(pgd) > loss(x)
    edge = adversarial(torch.ones(1, 1, 2, 2), lambda t: t.sum(), 0.05, 1, torch.Generator())
    assert edge.max() <= 1.0  # stays a valid image


@pytest.mark.parametrize("directory", sorted(p.name for p in assets_root().glob("vlm-*")))
def test_a_shipped_vlm_card_names_the_family_it_is_shipped_as(directory):
    """vlm-eval-<m> is `phantom-eval:<m>`, trained on the evaluator's data; vlm-<m> `phantom:<m>`."""
    card = json.loads((assets_root() / directory / "card.json").read_text())
    modality, evaluator = directory.rsplit("-", 1)[1], directory.startswith("vlm-eval-")
    family = "phantom-eval" if evaluator else "phantom"
    from craft_ray.pretrain.card import _markdown

    rendered = _markdown(card)
    assert (
        rendered.splitlines()[0] == f"# {family}:{modality} ({'evaluation' if evaluator else 'reward'} VLM)"
    )
    assert (assets_root() / directory / "README.md").read_text() == rendered  # the shipped one is current
    assert card["config"]["data_seed"] == (400 if evaluator else 200)


def test_pretrain_vlm_presets_and_seed_plan():
    from craft_ray.pretrain.vlm import ARCH_PRESETS, VLMPretrainConfig

    reward, evaluation = ARCH_PRESETS["reward"], ARCH_PRESETS["eval"]
    assert reward == VLMPretrainConfig(modality="chest").arch  # today's architecture by default
    for key in ("vision_hidden", "vision_layers", "patch_size"):
        assert getattr(reward, key) != getattr(evaluation, key)
    cfg = VLMPretrainConfig.from_preset("eval", modality="chest")
    assert cfg.data_seed == 400 and cfg.arch == evaluation and cfg.arch_name == "eval"
    assert VLMPretrainConfig.from_preset("reward", modality="chest").data_seed == 200
    fine = VLMPretrainConfig.from_preset("eval-fine80", modality="derm")
    assert fine.data_seed == 400 and fine.arch_name == "eval-fine80"  # the evaluator's data
    grid = {name: a.image_size // a.patch_size for name, a in ARCH_PRESETS.items()}
    assert grid == {"reward": 8, "eval": 8, "eval-fine80": 10}  # a finer grid, not another width
    assert fine.arch.vision_hidden != reward.vision_hidden  # and still not the reward's shape


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--arch", "big"], "error: --arch must be one of reward, eval, eval-fine80, got 'big'"),
        (["--data-seed", "999"], "error: --data-seed: data seed 999 would train on the gates"),
        (
            ["--data-seed", "299"],
            "error: --data-seed: data seed 299 would train on the out-of-family classifier",
        ),
        (
            ["--arch", "eval-fine80", "--data-seed", "200"],
            "error: --data-seed: data seed 200 would train this evaluation VLM (--arch eval-fine80) on the "
            "reward VLM's phantoms",
        ),
        (
            ["--data-seed", "399"],  # its negatives (seed 400) are the evaluation VLM's phantoms
            "error: --data-seed: data seed 399 would train this reward VLM (--arch reward) on the evaluation",
        ),
        (["--implausible", "1.5"], "error: --implausible: Input should be less than or equal to 1"),
        (["--adversarial-eps", "-1"], "error: --adversarial-eps: Input should be greater than or equal to 0"),
    ],
)
def test_pretrain_vlm_bad_options_fail_before_any_work(tmp_path, craft_in_process, option, message):
    result = craft_in_process("pretrain", "vlm", "--modality", "chest", "--out", str(tmp_path / "v"), *option)
    assert result.returncode == 2 and not (tmp_path / "v").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_shipped_models_fit_the_size_budget_and_say_how_to_remake_themselves():
    """The package's phantom models stay under 50 MB together, and each model card's command
    rebuilds that very directory (not a path of the machine that trained it)."""
    import json

    from craft_ray.models.phantom import assets_root

    root = assets_root()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 50 * 10**6, f"assets/phantom/ holds {total / 1e6:.1f} MB"
    cards = sorted(root.glob("*/card.json"))
    assert len(cards) >= 5  # the diffusion base and the four chest models at least
    for card in cards:
        command = json.loads(card.read_text())["command"]
        assert command.startswith("craft pretrain ")
        assert f" --out craft_ray/assets/phantom/{card.parent.name} " in command + " ", command
