"""Training building blocks without Ray: the DDIM step, seeded data order, one loop step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from craft_ray.config import validate_config
from craft_ray.errors import ConfigError, TrainingError
from craft_ray.models.diffusion import _scheduler
from craft_ray.train.context import batch_rows
from craft_ray.train.ddim import DDIMSampler
from craft_ray.train.loop import train_loop
from craft_ray.train.session import LocalSession

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def test_ddim_step_matches_diffusers_scheduler():
    scheduler = _scheduler()
    sampler = DDIMSampler(scheduler, 10, torch.device("cpu"))
    torch.manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in sampler.timesteps:
        assert torch.allclose(
            sampler.step(eps, t, x).prev_sample, scheduler.step(eps, t, x, eta=0.0).prev_sample, atol=1e-6
        )
        noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(int(t)))
        expected = scheduler.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
        got = sampler.step(eps, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        assert torch.allclose(got.prev_sample, expected, atol=1e-5)
        # the log-probability is that of the Gaussian transition (mean over elements)
        mean = sampler.step(eps, t, x, eta=0.0).prev_sample  # not the eta=1 mean: recompute it
        alpha, alpha_prev = sampler._alphas(t)
        std = ((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)).sqrt()
        x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).sqrt() * eps
        normal = torch.distributions.Normal(mean, std)
        assert torch.allclose(got.log_prob, normal.log_prob(got.prev_sample).mean(dim=(1, 2, 3)), atol=1e-4)


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


def test_ddpo_later_updates_see_importance_ratios_away_from_one(phantom_root, tmp_path):
    cfg = local_cfg(str(phantom_root / "chest"), "ddpo", steps=1, learning_rate=1e-2)
    assert cfg.ddpo.updates_per_epoch == 2
    session = LocalSession(tmp_path)
    train_loop(cfg, session)
    # the first update's ratios are exactly 1 (same policy as at sampling); the second's are not
    assert session.metrics[-1]["approx_kl"] > 0
    with pytest.raises(ConfigError, match="ddpo.updates_per_epoch=9 exceeds the 3 sampler transitions"):
        validate_config(
            {**cfg.model_dump(mode="json"), "ddpo": {"samples_per_prompt": 2, "updates_per_epoch": 9}}
        )


def test_a_checkpoint_is_refused_when_frozen_weights_move(phantom_root, tmp_path, monkeypatch):
    """The loop checks the frozen base weights before every checkpoint (they must never train)."""
    from craft_ray.train import methods
    from craft_ray.train.methods.sft import LoraSFT

    class LeakySFT(LoraSFT):
        def loss(self, ctx, rows, step, index):
            with torch.no_grad():  # a bug that writes into a frozen base weight
                next(p for p in ctx.components.unet.parameters() if not p.requires_grad).add_(1.0)
            return super().loss(ctx, rows, step, index)

    monkeypatch.setitem(methods.METHODS, "lora_sft", LeakySFT)
    with pytest.raises(TrainingError, match="frozen base weights changed; refusing to checkpoint"):
        train_loop(local_cfg(str(phantom_root / "chest"), "lora_sft", steps=1), LocalSession(tmp_path))
    assert not list(tmp_path.glob("checkpoint_*"))
