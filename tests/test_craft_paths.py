"""CRAFT's gradient paths, the reward/denoising balance, the robust reward, the probe, the
low-data regime and the warm start: each against a small case worked out by hand."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from craft_ray.config import validate_config
from craft_ray.train.context import derive_seed
from craft_ray.train.gradient_paths import sparse_schedule
from craft_ray.train.loop import TrainingRun, train_loop
from craft_ray.train.session import LocalSession

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def cfg_for(
    uri: str, method: str = "craft", reward: dict | None = None, model: dict | None = None, **training
):
    return validate_config(
        {
            "name": "paths",
            "method": method,
            "seed": 3,
            "dataset": {"name": "chexpert", "uri": uri, "resolution": 16, "labels": LABELS},
            "model": model or {},
            "reward": reward or {},
            "training": {"steps": 1, "sampler_steps": 6, "checkpoint_every": 1, "batch_size": 2, **training},
        }
    )


def test_sparse_schedule_by_hand():
    assert sparse_schedule(10, 3, 0) == [0, 3, 6]
    assert sparse_schedule(10, 3, 2) == [2, 5, 8]
    assert sparse_schedule(10, 2, 4) == [4, 9]
    assert sparse_schedule(4, 4, 0) == [0, 1, 2, 3]


class UNetCalls:
    """Records each UNet call: did its output carry a graph, was its input on the graph, and did a
    non-zero gradient arrive at its output in backward."""

    def __init__(self, unet):
        self.calls: list[dict] = []
        unet.register_forward_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs, output):
        call = {
            "graph": output.sample.requires_grad,
            "input_graph": args[0].requires_grad,
            "batch": args[0].shape[0],
            "grad": False,
        }
        self.calls.append(call)
        if call["graph"]:
            output.sample.register_hook(lambda g: call.update(grad=bool(g.abs().sum() > 0)))


def _run_path(uri: str, tmp_path: Path, **training):
    cfg = cfg_for(uri, gradient_checkpointing=False, **training)
    run = TrainingRun(cfg, LocalSession(tmp_path), None)
    calls = UNetCalls(run.ctx.components.unet)
    ctx, method = run.ctx, run.method
    rows = ctx.batch(0, 0)
    labels = ctx.labels_of(rows)
    cond, uncond = ctx.encode(ctx.prompts(labels, 0, 0)), ctx.encode([""] * len(rows))
    result = method.path(ctx, cond, uncond, 0, 0)
    reward = method.reward(
        ctx.decode(result.latents), labels * result.samples, ctx.generator(0, 0, "augment")
    )
    reward.total.mean().backward()
    return cfg, result, calls.calls


def test_last_k_keeps_exactly_the_last_k_steps_on_the_graph(phantom_root, tmp_path):
    _, result, calls = _run_path(
        str(phantom_root / "chest"), tmp_path, gradient_path="last_k", backprop_steps=2
    )
    assert [c["graph"] for c in calls] == [False] * 4 + [True] * 2
    assert [c["grad"] for c in calls] == [False] * 4 + [True] * 2
    assert [c["input_graph"] for c in calls] == [False] * 5 + [True]  # the chain: step 5 sees step 4's output
    assert result.grad_steps == [4, 5] and [s.on_graph for s in result.trace] == [False] * 4 + [True] * 2


def test_sparse_path_reaches_early_steps_with_the_unet_input_detached(phantom_root, tmp_path):
    cfg, result, calls = _run_path(
        str(phantom_root / "chest"), tmp_path, gradient_path="sparse", sparse_steps=3
    )
    # the offset within the stride of 2 is drawn per micro-batch from the run's seed (rank 0, step 0, micro 0)
    offset = random.Random(derive_seed(cfg.seed, 0, 0, 0, 2)).randrange(2)
    chosen = [offset, offset + 2, offset + 4]
    assert result.grad_steps == chosen and min(chosen) <= 1  # an early, high-noise step is included
    assert [c["graph"] for c in calls] == [i in chosen for i in range(6)]
    assert [c["grad"] for c in calls] == [i in chosen for i in range(6)]  # the reward reaches each of them
    assert not any(c["input_graph"] for c in calls)  # stop-gradient at every UNet input
    assert [s.on_graph for s in result.trace] == [i >= chosen[0] for i in range(6)]


def test_refl_scores_one_steps_predicted_clean_image(phantom_root, tmp_path):
    _, result, calls = _run_path(
        str(phantom_root / "chest"), tmp_path, gradient_path="refl", refl_range=(2, 3)
    )
    (step,) = result.grad_steps
    assert step in (3, 4)  # 2 or 3 steps before the end of 6
    assert len(calls) == step + 1  # sampling stops there: the reward is on that step's x0
    assert [c["graph"] for c in calls] == [False] * step + [True] and calls[-1]["grad"]


def test_lv_renoises_the_final_latents_and_denoises_them_with_gradient(phantom_root, tmp_path):
    _, result, calls = _run_path(str(phantom_root / "chest"), tmp_path, gradient_path="lv", lv_samples=3)
    assert result.samples == 3 and result.latents.shape[0] == 2 * 3
    assert [c["graph"] for c in calls] == [False] * 6 + [True]
    assert calls[-1]["batch"] == 2 * 2 * 3 and calls[-1]["grad"]  # (uncond, cond) x batch x copies


def test_ratio_balance_holds_the_reward_to_denoising_ratio(phantom_root, tmp_path):
    cfg = cfg_for(
        str(phantom_root / "chest"),
        steps=3,
        denoise_weight=0.5,
        reward_balance="ratio",
        reward_ratio=0.25,
        balance_momentum=0.5,
        sampler_steps=3,
    )
    session = LocalSession(tmp_path)
    train_loop(cfg, session)
    m = session.metrics
    assert m[0]["effective_ratio"] == pytest.approx(0.25, rel=1e-4)  # step 1: its own denoising norm
    average = m[0]["grad_norm_denoise"]
    for record in m[1:]:  # later steps: the running average of the earlier steps' norms, by hand
        assert record["reward_scale_applied"] * record["grad_norm_reward"] == pytest.approx(
            0.25 * average, rel=1e-4
        )
        average = 0.5 * average + 0.5 * record["grad_norm_denoise"]
    # the running average survives a checkpoint: a resumed run continues with it
    from craft_ray.train.checkpoint import read_method_state

    state = read_method_state(tmp_path / "checkpoint_000003")
    assert state["denoise_norm_avg"] == pytest.approx(average, rel=1e-6)


def test_the_surrogate_loss_applies_exactly_the_balanced_gradient(phantom_root, tmp_path):
    from craft_ray.train.balance import Balance

    cfg = cfg_for(str(phantom_root / "chest"), sampler_steps=3, denoise_weight=0.5, reward_scale=3.0)
    run = TrainingRun(cfg, LocalSession(tmp_path), None)
    ctx, params = run.ctx, run.trainable
    for p in params:  # LoRA B starts at zero: move it so every parameter has a gradient
        p.data.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    rows = ctx.batch(0, 0)
    labels = ctx.labels_of(rows)
    cond, uncond = ctx.encode(ctx.prompts(labels, 0, 0)), ctx.encode([""] * len(rows))
    images = ctx.decode(run.method.path(ctx, cond, uncond, 0, 0).latents)
    reward = run.method.reward(images, labels, ctx.generator(0, 0, "augment")).total.mean()
    denoise = ctx.denoising_loss(rows, 0, 0)
    g_reward = torch.autograd.grad(-reward, params, retain_graph=True)
    g_denoise = torch.autograd.grad(denoise, params, retain_graph=True)
    loss, metrics = Balance.from_config(cfg.training).combine(reward, denoise, params)
    got = torch.autograd.grad(loss, params)
    for g, gr, gd in zip(got, g_reward, g_denoise, strict=True):
        torch.testing.assert_close(g, 3.0 * gr + 0.5 * gd, rtol=1e-5, atol=1e-9)
    assert float(loss.detach()) == pytest.approx(
        -3.0 * float(reward.detach()) + 0.5 * float(denoise.detach()), rel=1e-5
    )
    norm = math.sqrt(sum(float((g**2).sum()) for g in g_reward))
    assert metrics["grad_norm_reward"] == pytest.approx(norm, rel=1e-4)


def test_log_likelihood_pathology_is_the_mean_log_of_the_correct_state():
    from craft_ray.cas import CASEvaluator
    from craft_ray.knowledge.prompts import finding_pair
    from craft_ray.models import build_vlm
    from craft_ray.train.reward import CASReward

    vlm = build_vlm("tiny")
    evaluator = CASEvaluator(
        "chexpert", vlm, {"pathology": 1, "checklist": 0, "anatomy": 0, "realism": 0}, LABELS
    )
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    sets = [["Cardiomegaly"], ["No Finding"], ["Pleural Effusion", "Support Devices"]]
    got = CASReward(evaluator, "log_likelihood")(images, sets).total
    from craft_ray.knowledge.labels import get_dataset

    spec = get_dataset("chexpert")
    emb = vlm.embed_images(images)
    expected = []
    for i, ls in enumerate(sets):
        logs = []
        for label in LABELS:
            present, absent = finding_pair(spec, label)
            sim = vlm.logits(emb[i : i + 1], [present, absent])[0]
            p = 1 / (1 + math.exp(-(float(sim[0]) - float(sim[1]))))
            logs.append(math.log(p if label in ls else 1 - p))
        expected.append(sum(logs) / len(logs))
    assert got.detach().tolist() == pytest.approx(expected, rel=1e-4)
    plain = CASReward(evaluator, "probability")(images, sets).total
    assert torch.all(got < torch.log(plain))  # Jensen: mean log < log mean


def test_augmentations_keep_laterality_and_the_gradient():
    from craft_ray.cas.augment import augment
    from craft_ray.config import AugmentConfig

    image = torch.zeros(1, 1, 32, 32)
    image[..., :, :16] = 0.9  # bright on the image's left
    image.requires_grad_(True)
    copies = augment(
        image,
        AugmentConfig(copies=6, shift=0.05, rotate=5, noise=0.02, blur=1.0),
        torch.Generator().manual_seed(0),
    )
    assert copies.shape == (6, 1, 32, 32)
    left, right = copies[..., :, :12].mean(dim=(1, 2, 3)), copies[..., :, 20:].mean(dim=(1, 2, 3))
    assert torch.all(left > right + 0.5)  # never mirrored
    assert not torch.allclose(copies[0], copies[1])  # the copies differ
    copies.sum().backward()
    assert image.grad.abs().sum() > 0


def test_low_data_subset_caps_every_label_and_is_seeded():
    from craft_ray.train.context import limit_positives

    sets = [["A"], ["A", "B"], ["B"], ["A"], ["C"], ["B", "C"], ["A"], ["C"]]
    keep = limit_positives(list(range(len(sets))), sets, 2, seed=0)
    counts = {label: sum(label in sets[r] for r in keep) for label in "ABC"}
    assert all(n <= 2 for n in counts.values()) and sum(counts.values()) >= 4
    assert keep == limit_positives(list(range(len(sets))), sets, 2, seed=0)
    assert any(limit_positives(list(range(len(sets))), sets, 2, seed=s) != keep for s in range(1, 6))


def test_warm_start_loads_a_runs_lora_and_refuses_another_shape(phantom_root, tmp_path):
    from craft_ray.errors import ConfigError
    from craft_ray.models.lora import lora_state_dict

    source = tmp_path / "sft"
    train_loop(cfg_for(str(phantom_root / "chest"), "lora_sft", learning_rate=0.05), LocalSession(source))
    trained = lora_state_dict(
        TrainingRun(
            cfg_for(str(phantom_root / "chest"), model={"init_lora": str(source / "checkpoint_000001")}),
            LocalSession(tmp_path / "a"),
            None,
        ).ctx.unet
    )
    from safetensors.torch import load_file

    saved = load_file(str(source / "checkpoint_000001" / "lora" / "pytorch_lora_weights.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k or "lora.up" in k)
    assert sum(float(v.abs().sum()) for v in trained.values()) == pytest.approx(
        sum(float(v.abs().sum()) for v in saved.values()), rel=1e-5
    )
    with pytest.raises(ConfigError, match="init_lora .* its LoRA is .*'rank': 4"):
        TrainingRun(
            cfg_for(
                str(phantom_root / "chest"),
                model={"init_lora": str(source / "checkpoint_000001"), "lora_rank": 8},
            ),
            LocalSession(tmp_path / "b"),
            None,
        )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("training: {refl_range: [5, 2]}", "refl_range"),
        ("training: {reward_balance: ratio}", "needs denoise_weight > 0"),
        ("training: {gradient_path: backwards}", "gradient_path"),
        (
            "method: lora_sft\nreward: {model: 'classifier:phantom-reward'}",
            "differentiable reward for method craft",
        ),
        ("reward: {augment: {copies: -1}}", "reward.augment.copies"),
        ("dataset: {max_positives: 0}", "dataset.max_positives"),
    ],
)
def test_config_errors_of_the_new_keys_are_one_line_exit_2(tmp_path, craft_in_process, yaml_text, message):
    import yaml

    base = {"name": "x", "method": "craft", "dataset": {"name": "chexpert", "uri": "data"}}
    extra = yaml.safe_load(yaml_text)
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(base))
    result = craft_in_process("config", "validate", str(path))
    assert result.returncode == 2 and message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_probe_finds_a_planted_single_pixel_reward_and_rates_a_classifier_reward_higher():
    """A reward that reads one pixel is maxed by changing that pixel: the independent classifier does
    not move (transfer ~ 0). A reward that is itself a classifier of the finding moves it (transfer
    far above)."""
    from craft_ray.cas.probe import ProbeSettings, probe_label
    from craft_ray.models.classifier import resolve_classifier
    from craft_ray.pretrain.phantom_tensors import make_phantom_set
    from craft_ray.train.reward import ClassifierReward

    clf = resolve_classifier("phantom:chest")
    data = make_phantom_set("chest", 40, seed=777)
    picks = [i for i, ls in enumerate(data.label_sets) if "Support Devices" not in ls][:4]
    images = data.floats(torch.tensor(picks))[:, :1]

    def planted(x, label_sets):  # P(label) read off the (dark) top-left pixel
        return torch.sigmoid(100 * (x[:, 0, 0, 0] - 0.05))

    robust = ClassifierReward(clf, LABELS, "probability")

    def robust_reward(x, label_sets):
        return robust(x, label_sets).total

    settings = ProbeSettings(steps=10, eps=0.1)
    fooled = probe_label(planted, clf.predict_proba, clf.labels, images, "Support Devices", settings)
    honest = probe_label(robust_reward, clf.predict_proba, clf.labels, images, "Support Devices", settings)
    assert fooled.reward_gain > 0.5 and abs(fooled.classifier_gain) < 0.05 and fooled.transfer < 0.1
    assert honest.reward_gain > 0.05 and honest.transfer > 0.5
    assert honest.transfer > fooled.transfer + 0.4


def test_probe_cli_refuses_bad_input_in_one_line(phantom_root, craft_in_process):
    result = craft_in_process(
        "cas", "probe", "--vlm", "tiny", "--data", str(phantom_root / "chest"), "--eps", "2"
    )
    assert result.returncode == 2 and "--eps" in result.stderr and "Traceback" not in result.stderr
    result = craft_in_process(
        "cas", "probe", "--vlm", "tiny", "--data", str(phantom_root / "chest"), "--labels", "Pnemonia"
    )
    assert result.returncode == 2 and "Pnemonia" in result.stderr


def test_probe_cli_records_its_numbers_in_the_vlms_card(phantom_root, craft_in_process, tmp_path):
    """`--card` keeps the probe's per-label numbers in a VLM's card.json and README; a VLM without a
    card is refused before any ascent runs."""
    import json
    import shutil

    from craft_ray.models.phantom import assets_root

    vlm = tmp_path / "vlm"
    shutil.copytree(assets_root() / "vlm-chest", vlm)
    data = str(phantom_root / "chest")
    args = ("cas", "probe", "--vlm", str(vlm), "--data", data, "--labels", "Cardiomegaly,Support Devices")
    result = craft_in_process(*args, "--n", "2", "--steps", "2", "--card")
    assert result.returncode == 0, result.stderr
    probe = json.loads((vlm / "card.json").read_text())["probe"]
    assert [r["label"] for r in probe["labels"]] == ["Cardiomegaly", "Support Devices"]
    assert all(r["n"] == 2 and r["reward_after"] >= r["reward_before"] for r in probe["labels"])
    assert "--card" in probe["command"] and "gate" in json.loads((vlm / "card.json").read_text())
    readme = (vlm / "README.md").read_text()
    assert "## Probe" in readme and "| Support Devices | 2 |" in readme and "## Held-out gate" in readme
    refused = craft_in_process("cas", "probe", "--vlm", "tiny", "--data", data, "--card")
    assert refused.returncode == 2 and "no model card" in refused.stderr


def test_classifier_reward_positive_control_moves_the_out_of_family_classifier():
    """The positive control at a reduced size: a short CRAFT run with a classifier reward (trained on
    phantoms the out-of-family classifier never saw) on one finding makes the base draw what the
    out-of-family classifier reads as that finding, on the same initial noise."""
    from craft_ray.demo.control import ControlSettings, run_control

    settings = ControlSettings(steps=20, images=8, n_data=60)
    (row,) = run_control(settings, ["Support Devices"], ["classifier"])
    assert row.reward_last > row.reward_first + 0.2  # the reward it was trained on rose
    assert row.p_after > row.p_before + 0.3 and row.paired_wins >= 6, row


def test_control_refuses_bad_rewards_and_targets_before_any_run(craft_in_process, tmp_path):
    out = tmp_path / "control.json"
    result = craft_in_process("control", "--out", str(out), "--rewards", "classifier,foo")
    assert result.returncode == 2 and "foo" in result.stderr and "CRAFT with" not in result.stderr
    result = craft_in_process("control", "--out", str(out), "--dataset", "isic")
    assert result.returncode == 2 and "--targets" in result.stderr
    assert not out.exists()
