"""training.weight_dtype / channels_last / compile and evaluation.weight_dtype on the tiny models, CPU.

The reference of every comparison is the fp32 eager path (mixed_precision "no"), the loop's existing
tested arithmetic. Tolerances, and why:
- bf16 frozen weights: relative loss difference <= 1e-2, gradient cosine >= 0.99 and norm within 5 %.
  bf16 keeps 8 mantissa bits (unit roundoff 2^-9 ~ 2e-3 per rounding); through the tiny UNet, VAE
  and VLM the measured differences were 2.2e-3 (loss), cosine 0.9988 and norm ratio 0.990, so the
  bounds leave a few times margin while a lost gradient path (zero, underflowed or wrong-signed
  gradients) fails them at once.
- fp16 (10 mantissa bits, 4x finer): the same bounds (measured 6.5e-4, 0.99997 and 1.003; without
  the loop's loss scaling the gradient underflows: cosine 0.66).
- channels_last and compile (aot_eager): the same aten kernels in another memory layout / traced
  order: losses within 1e-5 relative and weights after an update within 1e-6 (measured: equal).
CI compiles with backend aot_eager (Dynamo capture + AOTAutograd, where LoRA, checkpointing and
graph breaks go wrong) rather than inductor, whose C++ build of the tiny UNet's forward and backward
took ~285 s on this 2-core machine (aot_eager: ~10 s a graph); inductor runs in benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from craft_ray.config import validate_config
from craft_ray.errors import ConfigError
from craft_ray.train import precision
from craft_ray.train.loop import TrainingRun, train_loop
from craft_ray.train.precision import CompiledForward, LossScaler, ensure_sdpa
from craft_ray.train.session import LocalSession

LABELS = ["No Finding", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def cfg_of(uri: str, method: str = "craft", **training):
    return validate_config(
        {
            "name": "precision",
            "method": method,
            "seed": 1,
            # 16 px: the reward VLM (32 px) resizes the decoded image, as any real VLM does
            "dataset": {"name": "chexpert", "uri": uri, "resolution": 16, "labels": LABELS},
            "training": {
                "steps": 1,
                "sampler_steps": 2,
                "backprop_steps": 1,
                "checkpoint_every": 1,
                "mixed_precision": "no",
                **training,
            },
        }
    )


def first_loss_and_gradient(cfg, out) -> tuple[float, torch.Tensor, TrainingRun]:
    """The loss of step 1's first micro-batch and its LoRA gradient (flattened, fp32), through the
    loop's loss scaling (fp16: without it this gradient underflows, cosine 0.66 with fp32's)."""
    run = TrainingRun(cfg, LocalSession(out), None)
    with run.ctx.autocast():
        loss, _ = run.method.loss(run.ctx, run.ctx.batch(0, 0), 0, 0)
    grads = torch.autograd.grad(run.precision.scale(loss), run.trainable)
    scale = run.precision.scaler.value if run.precision.scaler.enabled else 1.0
    return float(loss.detach()), torch.cat([g.flatten().float() for g in grads]) / scale, run


@pytest.fixture(scope="module")
def fp32_reference(phantom_root, tmp_path_factory):
    loss, grad, _ = first_loss_and_gradient(
        cfg_of(str(phantom_root / "chest")), tmp_path_factory.mktemp("fp32")
    )
    return loss, grad


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_frozen_weights_give_the_fp32_loss_and_gradient(
    phantom_root, tmp_path, fp32_reference, dtype
):
    cfg = cfg_of(str(phantom_root / "chest"), weight_dtype=dtype, mixed_precision="auto")
    loss, grad, run = first_loss_and_gradient(cfg, tmp_path / "probe")
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    components = run.ctx.components
    frozen = [p for m in (components.unet, components.vae, components.text_encoder) for p in m.parameters()]
    frozen = [p for p in frozen if not p.requires_grad] + list(run.ctx.evaluator.vlm.parameters())
    assert frozen and {p.dtype for p in frozen} == {want}  # stored in the weight dtype ...
    assert run.trainable and {p.dtype for p in run.trainable} == {torch.float32}  # ... LoRA stays fp32
    ref_loss, ref_grad = fp32_reference
    assert abs(loss - ref_loss) <= 1e-2 * abs(ref_loss)
    assert float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0)) >= 0.99
    assert 0.95 <= float(grad.norm() / ref_grad.norm()) <= 1.05
    # a whole loop step: fp32 optimiser state, a finite update, fp16's loss scale in the metrics
    metrics = run.step(0)
    assert math.isfinite(metrics["loss"]) and metrics["skipped_steps"] == 0
    assert abs(metrics["loss"] - ref_loss) <= 1e-2 * abs(ref_loss)
    state = [s for s in run.optimizer.state.values() if "exp_avg" in s]
    assert state and {s["exp_avg"].dtype for s in state} == {torch.float32}
    assert ("loss_scale" in metrics) == (dtype == "fp16")


def test_full_sft_keeps_the_trained_unet_in_fp32(phantom_root, tmp_path):
    cfg = cfg_of(str(phantom_root / "chest"), "full_sft", weight_dtype="bf16", mixed_precision="auto")
    run = TrainingRun(cfg, LocalSession(tmp_path), None)
    assert {p.dtype for p in run.ctx.components.unet.parameters()} == {torch.float32}
    assert {p.dtype for p in run.ctx.components.vae.parameters()} == {torch.bfloat16}
    assert math.isfinite(run.step(0)["loss"])


def _lora_weights(run: TrainingRun) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in run.trainable])


def _one_step(cfg, out) -> tuple[dict, torch.Tensor, TrainingRun]:
    run = TrainingRun(cfg, LocalSession(out), None)
    return run.step(0), _lora_weights(run), run


def test_channels_last_gives_the_eager_loss_and_update(phantom_root, tmp_path):
    uri = str(phantom_root / "chest")
    plain, plain_weights, _ = _one_step(cfg_of(uri), tmp_path / "plain")
    nhwc, nhwc_weights, run = _one_step(cfg_of(uri, channels_last=True), tmp_path / "nhwc")
    conv = run.ctx.components.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nhwc["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    torch.testing.assert_close(nhwc_weights, plain_weights, atol=1e-6, rtol=0)


def test_compiled_unet_gives_the_eager_loss_and_update(phantom_root, tmp_path):
    """CRAFT with T = K = 1: the one UNet call carries the gradient inside gradient checkpointing
    (whose recomputation stops early by raising an exception through the compiled forward)."""
    uri = str(phantom_root / "chest")
    settings = dict(sampler_steps=1, backprop_steps=1, denoise_weight=0.0)
    eager, eager_weights, _ = _one_step(cfg_of(uri, **settings), tmp_path / "eager")
    compiled_cfg = cfg_of(uri, **settings, compile=True, compile_backend="aot_eager")
    compiled, compiled_weights, run = _one_step(compiled_cfg, tmp_path / "compiled")
    assert compiled["compiled"] == 1.0 and compiled["compile_fallback"] == 0.0
    assert isinstance(run.ctx.components.unet.forward, CompiledForward)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)
    torch.testing.assert_close(compiled_weights, eager_weights, atol=1e-6, rtol=0)


def test_a_compiler_failure_warns_once_and_the_run_continues_eager(phantom_root, tmp_path, monkeypatch):
    uri = str(phantom_root / "chest")
    eager = LocalSession(tmp_path / "eager")
    train_loop(cfg_of(uri, "lora_sft", steps=2), eager)

    def broken_compile(fn, **options):
        def compiled(*args, **kwargs):
            raise torch._dynamo.exc.BackendCompilerFailed(
                "inductor", RuntimeError("C++ compile failed"), None
            )

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    session = LocalSession(tmp_path / "fallback")
    with pytest.warns(RuntimeWarning, match="training.compile: torch.compile failed") as caught:
        train_loop(cfg_of(uri, "lora_sft", steps=2, compile=True), session)
    assert len([w for w in caught if "training.compile" in str(w.message)]) == 1
    assert [m["compiled"] for m in session.metrics] == [0.0, 0.0]
    assert [m["compile_fallback"] for m in session.metrics] == [1.0, 1.0]
    assert [m["loss"] for m in session.metrics] == [m["loss"] for m in eager.metrics]


def test_compiled_forward_routes_by_grad_mode_and_lets_other_errors_through(monkeypatch):
    calls = []

    def fake_compile(fn, **options):
        def compiled(*args, **kwargs):
            calls.append(options.get("mode", "default"))
            if fail["now"]:
                raise fail["now"]
            return fn(*args, **kwargs)

        return compiled

    fail: dict = {"now": None}
    monkeypatch.setattr(torch, "compile", fake_compile)
    layer = torch.nn.Linear(3, 2)
    x = torch.ones(1, 3)
    expected = layer(x)
    compiled = CompiledForward(layer, "inductor", cudagraphs=True)
    torch.testing.assert_close(layer(x), expected)
    with torch.no_grad():
        layer(x)
    assert calls == ["default", "reduce-overhead"]  # CUDA graphs only for calls without gradient
    fail["now"] = RuntimeError("not the compiler's: e.g. checkpoint's recomputation stop")
    with pytest.raises(RuntimeError, match="not the compiler's"):
        layer(x)
    assert compiled.active
    fail["now"] = torch._dynamo.exc.TorchDynamoException("graph capture failed")
    with pytest.warns(RuntimeWarning, match="graph capture failed"):
        torch.testing.assert_close(layer(x), expected)  # the eager result, at once
    calls.clear()
    torch.testing.assert_close(layer(x), expected)
    assert not compiled.active and calls == []  # eager from then on


def test_loss_scaler_halves_on_overflow_and_grows_after_clean_updates():
    scaler = LossScaler(enabled=True, init=1024.0, growth_interval=3)
    assert float(scaler.scale(torch.tensor(0.5))) == 512.0
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1024.0, -2048.0])
    scaler.unscale_([p])
    assert p.grad.tolist() == [1.0, -2.0]
    scaler.update(overflow=True)
    assert scaler.value == 512.0
    for _ in range(3):
        scaler.update(overflow=False)
    assert scaler.value == 1024.0
    off = LossScaler(enabled=False)
    assert float(off.scale(torch.tensor(0.5))) == 0.5
    off.update(overflow=True)
    assert off.value == 2.0**12


def test_classic_attention_is_switched_to_sdpa_with_the_same_output():
    from diffusers.models.attention_processor import AttnProcessor

    from craft_ray.models.diffusion import build_diffusion

    unet = build_diffusion("tiny").unet.eval()
    assert ensure_sdpa(unet) == ["AttnProcessor2_0"]  # diffusers' default already
    unet.set_attn_processor(AttnProcessor())
    x, t, h = torch.randn(2, 4, 8, 8), torch.tensor(10), torch.randn(2, 77, 32)
    with torch.no_grad():
        classic = unet(x, t, encoder_hidden_states=h).sample
        assert ensure_sdpa(unet) == ["AttnProcessor2_0"]
        sdpa = unet(x, t, encoder_hidden_states=h).sample
    torch.testing.assert_close(sdpa, classic, atol=1e-5, rtol=1e-4)


def test_weight_dtype_config_errors_name_the_field(tmp_path):
    base = {"name": "x", "method": "craft", "dataset": {"name": "chexpert", "uri": str(tmp_path)}}
    with pytest.raises(ConfigError, match="training: weight_dtype=bf16 needs autocast to bf16"):
        validate_config({**base, "training": {"weight_dtype": "bf16", "mixed_precision": "no"}})
    with pytest.raises(ConfigError, match="training: weight_dtype=fp16 autocasts to fp16"):
        validate_config({**base, "training": {"weight_dtype": "fp16", "mixed_precision": "bf16"}})
    with pytest.raises(ConfigError, match="training.weight_dtype: Input should be 'fp32', 'bf16' or 'fp16'"):
        validate_config({**base, "training": {"weight_dtype": "fp8"}})
    with pytest.raises(ConfigError, match="training.compile_backend"):
        validate_config({**base, "training": {"compile": True, "compile_backend": "tensorrt"}})
    cfg = validate_config({**base, "training": {"weight_dtype": "bf16"}})
    cpu = torch.device("cpu")
    assert precision.autocast_dtype(cfg.training, cpu) == torch.bfloat16  # bf16 weights: autocast on CPU too
    assert precision.autocast_dtype(validate_config(base).training, cpu) is None  # fp32 on CPU: none


def test_evaluation_generates_in_its_weight_dtype_close_to_fp32(tmp_path):
    from craft_ray.evaluation.generation import ImageGenerator, SamplerSettings
    from craft_ray.evaluation.source import ModelSource

    cfg = validate_config(
        {
            "name": "x",
            "method": "craft",
            "dataset": {"name": "chexpert", "uri": str(tmp_path), "resolution": 32},
        }
    )
    source = ModelSource(cfg, "pretrained:tiny", "pretrained", None, None, None, None)
    images = {}
    for dtype in ("fp32", "bf16"):
        generator = ImageGenerator(source, SamplerSettings(4, 3.0, 0.0, dtype))
        assert generator.pipe.unet.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        batch, _ = generator.generate([["Cardiomegaly"], ["No Finding"]], [1, 2])
        images[dtype] = np.stack(batch).astype(float)
    difference = np.abs(images["bf16"] - images["fp32"])
    # bf16 sampling moves pixels by a level or two of 255 (measured: mean 0.42, max 2), not more
    assert 0 < difference.mean() <= 1.5 and difference.max() <= 8
    # fp32 (the default) stays out of an evaluation's identity, so stored evaluations still match
    assert "dtype" not in SamplerSettings(4, 3.0, 0.0).identity()
    assert SamplerSettings(4, 3.0, 0.0, "bf16").identity()["dtype"] == "bf16"
