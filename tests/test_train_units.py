"""Training building blocks without Ray: the DDIM step, seeded data order, one loop step."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from craft_ray.config import validate_config
from craft_ray.errors import ConfigError, TrainingError
from craft_ray.models.diffusion import _scheduler
from craft_ray.train.context import batch_rows
from craft_ray.train.ddim import DDIMSampler
from craft_ray.train.loop import train_loop
from craft_ray.train.session import LocalSession

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_diffusers_scheduler(prediction_type):
    """Our DDIM step is diffusers' (eta 0 and 1), and its log-probability is that of the Gaussian
    transition whose mean and variance diffusers computes (no formula copied from the sampler)."""
    scheduler = DDIMScheduler.from_config({**_scheduler().config, "prediction_type": prediction_type})
    sampler = DDIMSampler(scheduler, 10, torch.device("cpu"))
    torch.manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in sampler.timesteps:
        assert torch.allclose(
            sampler.step(out, t, x).prev_sample, scheduler.step(out, t, x, eta=0.0).prev_sample, atol=1e-6
        )
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(int(t)))
        expected = scheduler.step(out, t, x, eta=1.0, variance_noise=noise).prev_sample
        got = sampler.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        assert torch.allclose(got.prev_sample, expected, atol=1e-5)
        mean = scheduler.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        std = scheduler._get_variance(t, t - scheduler.config.num_train_timesteps // 10).sqrt()
        reference = torch.distributions.Normal(mean, std).log_prob(got.prev_sample).mean(dim=(1, 2, 3))
        assert torch.allclose(got.log_prob, reference, atol=1e-4)


def test_ddim_log_prob_skips_deterministic_steps_of_set_alpha_to_one_schedulers():
    """With set_alpha_to_one the last DDIM step has zero variance: its log-density does not exist
    (it was NaN); the sampler says so with None instead of a NaN that would poison DDPO."""
    scheduler = DDIMScheduler.from_config({**_scheduler().config, "set_alpha_to_one": True})
    sampler = DDIMSampler(scheduler, 5, torch.device("cpu"))
    x = torch.randn(1, 4, 8, 8)
    steps = [
        sampler.step(torch.randn_like(x), t, x, eta=1.0, generator=torch.Generator().manual_seed(0))
        for t in sampler.timesteps
    ]
    assert [s.log_prob is None for s in steps] == [False] * 4 + [True]
    assert all(torch.isfinite(s.log_prob).all() for s in steps[:4])
    assert sampler.stochastic_steps(1.0) == [0, 1, 2, 3]


def test_batch_rows_partition_each_epoch_across_workers():
    n, world, batch, accum = 23, 2, 3, 2
    seen = []
    for step in range(4):
        for micro in range(accum):
            for rank in range(world):
                seen.extend(batch_rows(n, 5, step, micro, rank, world, batch, accum))
    first_epoch = seen[:n]
    assert sorted(first_epoch) == list(range(n))  # every row once per epoch, no overlap between ranks
    assert batch_rows(n, 5, 3, 1, 1, world, batch, accum) == batch_rows(n, 5, 3, 1, 1, world, batch, accum)
    assert batch_rows(n, 5, 3, 1, 1, world, batch, accum) != batch_rows(n, 6, 3, 1, 1, world, batch, accum)


def local_cfg(uri: str, method: str, **training):
    return validate_config(
        {
            "name": "unit",
            "method": method,
            "seed": 1,
            "dataset": {"name": "chexpert", "uri": uri, "resolution": 32, "labels": LABELS},
            "training": {
                "steps": 2,
                "sampler_steps": 3,
                "backprop_steps": 1,
                "checkpoint_every": 1,
                **training,
            },
            "ddpo": {"samples_per_prompt": 2},
        }
    )


def test_craft_step_trains_only_lora_and_checkpoints(phantom_root, tmp_path):
    from safetensors.torch import load_file

    session = LocalSession(tmp_path)
    last = train_loop(
        local_cfg(str(phantom_root / "chest"), "craft", random_truncation=True, backprop_steps=2), session
    )
    assert [m["step"] for m in session.metrics] == [1.0, 2.0]
    assert all(1 <= m["backprop_steps"] <= 2 for m in session.metrics)
    assert all(0 <= m["reward"] <= 1 and math.isfinite(m["grad_norm"]) for m in session.metrics)
    assert last["checkpoint"] == 1.0
    lora = load_file(str(tmp_path / "checkpoint_000002" / "lora" / "pytorch_lora_weights.safetensors"))
    ups = [v for k, v in lora.items() if "lora_B" in k or "lora.up" in k]
    assert ups and any(v.abs().sum() > 0 for v in ups)  # B starts at zero: training moved it
    card = json.loads((tmp_path / "checkpoint_000002" / "model.json").read_text())
    assert card["lora"] == {"rank": 4, "alpha": 4.0, "targets": ["to_k", "to_out.0", "to_q", "to_v"]}
    # resuming a finished run trains nothing more and keeps the checkpoint
    again = LocalSession(tmp_path)
    train_loop(local_cfg(str(phantom_root / "chest"), "craft"), again)
    assert again.metrics[-1]["step"] == 2.0 and again.metrics[-1]["resumed_from"] == 2.0
    # ... but not with another LoRA shape or strength than the checkpoint's
    cfg = local_cfg(str(phantom_root / "chest"), "craft")
    cfg.model.lora_alpha = 8.0
    with pytest.raises(
        TrainingError, match="its LoRA is .*'alpha': 4.0.* the config asks for .*'alpha': 8.0"
    ):
        train_loop(cfg, LocalSession(tmp_path))


@pytest.mark.parametrize("method", ["lora_sft", "ddpo"])
def test_other_methods_take_a_local_step(phantom_root, tmp_path, method):
    session = LocalSession(tmp_path)
    train_loop(local_cfg(str(phantom_root / "chest"), method, steps=1), session)
    assert session.metrics[-1]["step"] == 1.0 and math.isfinite(session.metrics[-1]["loss"])


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_ddpo_importance_ratios_are_one_at_the_first_update_then_move(
    phantom_root, tmp_path, monkeypatch, precision
):
    """Sampling (plan, which records the old log-probs) and re-scoring (loss) run at the same
    precision, so the first update of a round sees ratio 1 exactly, also under bf16 autocast (what
    GPU runs use; CPU bf16 autocast stands in for it); the update moves the policy for the next."""
    from craft_ray.train import methods
    from craft_ray.train.methods.ddpo import DDPO

    ratios, autocast = [], []

    class RecordingDDPO(DDPO):
        def log_ratio(self, ctx, tr):
            autocast.append(torch.is_autocast_enabled("cpu"))
            value = super().log_ratio(ctx, tr)
            ratios.append(value.detach().float().exp())
            return value

    monkeypatch.setitem(methods.METHODS, "ddpo", RecordingDDPO)
    cfg = local_cfg(
        str(phantom_root / "chest"), "ddpo", steps=1, learning_rate=1e-2, mixed_precision=precision
    )
    assert cfg.ddpo.updates_per_epoch == 2 and cfg.training.sampler_steps == 3
    session = LocalSession(tmp_path)
    train_loop(cfg, session)
    assert autocast == [precision == "bf16"] * 3
    # 3 transitions in 2 updates (round robin): calls 0-1 are the first update, call 2 the second
    first, second = torch.cat(ratios[:2]), ratios[2]
    torch.testing.assert_close(first, torch.ones_like(first), atol=1e-6, rtol=0)
    assert (second - 1).abs().max() > 1e-4  # the first update changed the policy
    assert session.metrics[-1]["clip_fraction"] > 0 and session.metrics[-1]["approx_kl"] > 0
    with pytest.raises(ConfigError, match="ddpo.updates_per_epoch=9 exceeds the 3 sampler transitions"):
        validate_config(
            {**cfg.model_dump(mode="json"), "ddpo": {"samples_per_prompt": 2, "updates_per_epoch": 9}}
        )


LEAKS = {
    "shift": lambda w: w.add_(1.0),
    "sign_flip": lambda w: w.neg_(),  # |w| is unchanged: a sum of |w| cannot see it
    "tiny_leak": lambda w: w.view(-1)[0].add_(1e-4),  # far below a relative tolerance on the sum
}


@pytest.mark.parametrize("leak", list(LEAKS))
def test_a_checkpoint_is_refused_when_frozen_weights_move(phantom_root, tmp_path, monkeypatch, leak):
    """The loop checks the frozen base weights before every checkpoint (they must never train)."""
    from craft_ray.train import methods
    from craft_ray.train.methods.sft import LoraSFT

    class LeakySFT(LoraSFT):
        def loss(self, ctx, rows, step, index):
            with torch.no_grad():  # a bug that writes into a frozen base weight
                frozen = [p for p in ctx.components.unet.parameters() if not p.requires_grad]
                LEAKS[leak](max(frozen, key=lambda p: p.numel()))
            return super().loss(ctx, rows, step, index)

    monkeypatch.setitem(methods.METHODS, "lora_sft", LeakySFT)
    with pytest.raises(TrainingError, match=r"frozen base weights changed \(1 tensor"):
        train_loop(local_cfg(str(phantom_root / "chest"), "lora_sft", steps=1), LocalSession(tmp_path))
    assert not list(tmp_path.glob("checkpoint_*"))


def _save_calibration(spec, path, mu=0.5):
    from craft_ray.cas import Calibration, RealismReference

    Calibration(spec, 0.05, "data", "val", {}, {}, {}, RealismReference([1.0] * 32, mu, 0.1)).save(path)
    return str(path)


def test_the_reward_refuses_a_calibration_of_another_evaluator(phantom_root, tmp_path):
    """reward.calibration must come from the same dataset, VLM and labels as the reward; a mismatch
    is one clear line naming both, not a crash on embedding sizes or silently wrong scores."""
    import dataclasses

    from craft_ray.cas import EvaluatorSpec
    from craft_ray.train.context import build_evaluator_for

    cfg = local_cfg(str(phantom_root / "chest"), "craft")
    spec = EvaluatorSpec.from_config(cfg)
    cfg.reward.calibration = _save_calibration(spec, tmp_path / "same.json", mu=0.25)
    assert build_evaluator_for(cfg, torch.device("cpu"), False).reference.mu == 0.25
    for field, value, message in [
        ("vlm", "small", "vlm 'small' vs 'tiny'"),
        ("dataset", "isic", "dataset 'isic' vs 'chexpert'"),
        (
            "labels",
            ["Cardiomegaly", "No Finding"],
            r"labels \['Cardiomegaly', 'No Finding'\] vs \['No Finding',",
        ),
    ]:
        other = dataclasses.replace(spec, **{field: value})
        cfg.reward.calibration = _save_calibration(other, tmp_path / f"{field}.json")
        with pytest.raises(
            ConfigError, match=rf"calibration .*{field}.json does not match the config's reward: {message}"
        ):
            build_evaluator_for(cfg, torch.device("cpu"), False)


def test_checklist_overlays_reach_the_training_reward(phantom_root, tmp_path, monkeypatch):
    import yaml

    from craft_ray.train.context import build_evaluator_for

    overlay = tmp_path / "mllm.yaml"
    item = {
        "question": "Is the heart wider than half the chest?",
        "present": "a wide heart",
        "absent": "a narrow heart",
    }
    overlay.write_text(
        yaml.safe_dump({"version": 2, "name": "mllm", "labels": {"chexpert": {"Cardiomegaly": [item]}}})
    )
    data = local_cfg(str(phantom_root / "chest"), "craft").model_dump(mode="json")
    data["reward"]["checklists"] = ["mllm.yaml"]
    monkeypatch.chdir(tmp_path)  # relative overlay paths resolve against the working directory
    cfg = validate_config(data).resolved()
    assert cfg.reward.checklists == [str(overlay)]
    evaluator = build_evaluator_for(cfg, torch.device("cpu"), False)
    checklist = evaluator.dimensions["checklist"]
    assert [i.question for i in checklist.knowledge.for_label("chexpert", "Cardiomegaly")] == [
        item["question"]
    ]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny pipeline saved in the diffusers layout with scheduler settings changed, as a user's
    checkpoint would have them."""
    from craft_ray.models import build_diffusion, save_diffusion

    def make(**scheduler) -> str:
        path = tmp_path_factory.mktemp("sd")
        save_diffusion(build_diffusion("tiny"), path)
        config_path = path / "scheduler" / "scheduler_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **scheduler}))
        return str(path)

    return make


@pytest.mark.parametrize(
    ("method", "scheduler"),
    [
        ("ddpo", {"set_alpha_to_one": True}),  # its last step has no log-probability (was NaN)
        ("craft", {"prediction_type": "v_prediction"}),
        ("lora_sft", {"prediction_type": "v_prediction"}),
    ],
)
def test_methods_train_on_other_scheduler_configs(phantom_root, tmp_path, saved_tiny, method, scheduler):
    data = local_cfg(str(phantom_root / "chest"), method, steps=1).model_dump(mode="json")
    data["model"]["base"] = saved_tiny(**scheduler)
    session = LocalSession(tmp_path)
    train_loop(validate_config(data), session)
    last = session.metrics[-1]
    assert last["skipped_steps"] == 0 and math.isfinite(last["loss"]) and math.isfinite(last["grad_norm"])


def test_metrics_jsonl_is_appended_not_rewritten(tmp_path):
    """Each report appends its own lines (a long run's reports used to rewrite the whole history)."""
    from craft_ray.train.trainer import _make_recorder, read_metrics

    recorder = _make_recorder(str(tmp_path), None)
    recorder.after_report(None, [{"step": 2.0, "history": [{"step": 1.0}, {"step": 2.0}]}], None)
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"marker": 1}\n')  # a line this recorder did not write
    recorder.after_report(None, [{"step": 3.0, "history": [{"step": 3.0}]}], None)
    assert read_metrics(str(tmp_path)) == [{"step": 1.0}, {"step": 2.0}, {"marker": 1}, {"step": 3.0}]


@pytest.mark.parametrize("k", [1, 3])
def test_craft_gradients_reach_only_the_last_k_sampler_steps(phantom_root, tmp_path, monkeypatch, k):
    """DRaFT-K: of the T UNet calls of a sampling run, exactly the last K carry a graph, and the
    reward's gradient arrives at each of them (and at no other)."""
    from craft_ray.models import build_diffusion

    calls = []

    def record(module, args, kwargs, output):
        call = {"graph": output.sample.requires_grad, "grad": False}
        calls.append(call)
        if call["graph"]:
            output.sample.register_hook(lambda g: call.update(grad=bool(g.abs().sum() > 0)))

    def hooked(base, revision=None):
        components = build_diffusion(base, revision)
        components.unet.register_forward_hook(record, with_kwargs=True)
        return components

    monkeypatch.setattr("craft_ray.train.loop.build_diffusion", hooked)
    cfg = local_cfg(
        str(phantom_root / "chest"),
        "craft",
        steps=1,
        sampler_steps=4,
        backprop_steps=k,
        gradient_checkpointing=False,
    )
    train_loop(cfg, LocalSession(tmp_path))
    assert len(calls) == 4
    assert [c["graph"] for c in calls] == [i >= 4 - k for i in range(4)]
    assert [c["grad"] for c in calls] == [i >= 4 - k for i in range(4)]


def test_grad_accum_applies_the_mean_of_the_micro_batch_gradients(phantom_root, tmp_path):
    """With grad_accum=2 the update uses the mean of the two micro-batches' gradients, computed here
    independently with torch.autograd.grad on the same seeded micro-batches."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from craft_ray.train.loop import TrainingRun

    cfg = local_cfg(str(phantom_root / "chest"), "lora_sft", steps=1, grad_accum=2, max_grad_norm=1e9)
    applied = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: applied.append(
            [p.grad.clone() for g in opt.param_groups for p in g["params"]]
        )
    )
    try:
        train_loop(cfg, LocalSession(tmp_path / "run"))
    finally:
        handle.remove()
    reference = TrainingRun(cfg, LocalSession(tmp_path / "ref"), None)  # same seeded model and batches
    per_micro = []
    for micro in range(2):
        loss, _ = reference.method.loss(reference.ctx, reference.ctx.batch(0, micro), 0, micro)
        per_micro.append(torch.autograd.grad(loss, reference.trainable))
    assert len(applied) == 1 and len(applied[0]) == len(reference.trainable)
    for got, a, b in zip(applied[0], *per_micro, strict=True):
        torch.testing.assert_close(got, (a + b) / 2, atol=1e-7, rtol=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(*per_micro, strict=True))  # two different batches


class _ToyResult:
    def __init__(self, total: torch.Tensor):
        self.total, self.dims = total, {}


class RedBrightness:
    """A toy reward a model can learn quickly: the mean of the first channel, in [0, 1] (for the
    greyscale chest data the reward sees luma: the brightness of the image as evaluation stores it)."""

    def score(self, images, label_sets, evaluate=False):
        return _ToyResult(images[:, 0].mean(dim=(1, 2)))


@pytest.mark.parametrize(
    ("method", "training", "ddpo", "gain"),
    [
        ("craft", {"learning_rate": 1e-2}, {}, 0.05),
        # DDPO learns it too (measured: 0.472 -> 0.510 with sampler_steps 10, samples_per_prompt 8),
        # but policy gradient needs ~20x the compute of reward backprop: too slow for CI on CPU
    ],
)
def test_reward_methods_raise_a_toy_reward(phantom_root, tmp_path, monkeypatch, method, training, ddpo, gain):
    """20 steps of CRAFT or DDPO on 'red brightness' raise it: in the rewards seen while training and
    in images the trained LoRA gives diffusers' own pipeline from fixed noise (an independent check)."""
    from craft_ray.models import build_diffusion, load_lora_into

    monkeypatch.setattr(
        "craft_ray.train.loop.build_evaluator_for", lambda cfg, device, with_mllm: RedBrightness()
    )
    data = local_cfg(
        str(phantom_root / "chest"), method, steps=20, checkpoint_every=20, report_every=20, **training
    ).model_dump(mode="json")
    data["dataset"]["resolution"] = 16
    data["ddpo"].update(ddpo)
    session = LocalSession(tmp_path)
    train_loop(validate_config(data), session)
    rewards = [m["reward"] for m in session.metrics]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + gain

    import random

    from craft_ray.knowledge.labels import get_dataset
    from craft_ray.knowledge.prompts import build_prompt, enricher_for

    spec = get_dataset("chexpert")
    enricher = enricher_for(spec, validate_config(data).prompts)
    label_sets = [["Cardiomegaly"], ["No Finding"], ["Pleural Effusion"], ["Lung Opacity", "Support Devices"]]
    # prompts as the run trained with them (template + enrichment): the tiny text encoder's LoRA is prompt-specific
    prompts = [build_prompt(spec, ls, enricher, random.Random(i)) for i, ls in enumerate(label_sets * 4)]

    def red(lora=None) -> float:
        """Brightness of the pipeline's images as evaluation stores chest images: PIL's greyscale."""
        from PIL import Image

        pipe = build_diffusion("tiny").pipeline()
        if lora is not None:
            load_lora_into(pipe, lora)
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            prompts,
            num_inference_steps=3,
            height=16,
            width=16,
            guidance_scale=data["training"]["guidance_scale"],
            eta=1.0 if method == "ddpo" else 0.0,  # as each method samples
            output_type="np",
            generator=torch.Generator().manual_seed(123),
        ).images
        grey = [
            np.asarray(Image.fromarray((im * 255).round().astype(np.uint8)).convert("L")) for im in images
        ]
        return float(np.mean(grey)) / 255.0

    assert red(tmp_path / "checkpoint_000020" / "lora") > red() + 0.02
