"""Model builders on tiny configs: tokenizer, diffusion + LoRA, VLM and MLLM scorers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_gradient_matches_finite_differences, generate_chest
from PIL import Image
from serving_helpers import TinyMLLMEndpoint

from craft_ray.errors import EndpointError, ModelError
from craft_ray.models import (
    add_lora,
    build_diffusion,
    build_mllm,
    build_vlm,
    load_lora_into,
    save_diffusion,
    save_lora,
)
from craft_ray.models.mllm import Qwen2VLPixels, RemoteMLLMScorer, pixel_adapter_for, png_data_url, tiny_llava
from craft_ray.models.tokenizer import corpus_words, tiny_clip_tokenizer


def test_tiny_tokenizer_is_offline_deterministic_and_whole_word():
    a, b = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for word in corpus_words():
        assert len(a(word, add_special_tokens=False)["input_ids"]) == 1, word
    ids = a("cardiomegaly qwxz")["input_ids"]
    assert (
        ids[0] == a.bos_token_id and ids[-1] == a.eos_token_id and len(ids) > 4
    )  # unknown word: byte pieces


def test_diffusion_preset_is_seeded_and_round_trips_through_from_pretrained(tmp_path):
    a, b = build_diffusion("tiny"), build_diffusion("tiny")
    for pa_, pb in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.equal(pa_, pb)
    save_diffusion(a, tmp_path / "sd")
    loaded = build_diffusion(str(tmp_path / "sd"))
    assert loaded.tokenizer.get_vocab() == a.tokenizer.get_vocab()
    emb = a.encode_prompts(["a frontal chest radiograph"])
    assert torch.allclose(emb, loaded.encode_prompts(["a frontal chest radiograph"]))
    with pytest.raises(ModelError, match="cannot load diffusion model"):
        build_diffusion(str(tmp_path / "nope"))


def test_lora_trains_only_adapters_and_loads_with_diffusers(tmp_path):
    trained = build_diffusion("tiny")
    params = add_lora(trained.unet, rank=4)
    trainable = [n for n, p in trained.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable) and len(trainable) == len(params)
    with torch.no_grad():
        for p in params:
            p.add_(0.3)
    save_lora(trained.unet, tmp_path / "lora")
    base = build_diffusion("tiny").pipeline()
    before = generate_chest(base)
    load_lora_into(base, tmp_path / "lora")
    after = generate_chest(base)
    assert np.abs(after - before).max() > 1e-3  # the LoRA changes the output
    np.testing.assert_allclose(after, generate_chest(trained.pipeline()), atol=1e-5)  # ... exactly as trained
    with torch.no_grad():
        params[0].fill_(float("nan"))
    with pytest.raises(ModelError, match="NaN"):
        save_lora(trained.unet, tmp_path / "bad")


def test_vlm_gradient_matches_finite_differences():
    vlm = build_vlm("tiny").double()
    torch.manual_seed(0)
    texts = ["a frontal chest radiograph", "a cartoon drawing"]
    assert_gradient_matches_finite_differences(
        lambda img: vlm.logits(vlm.embed_images(img), texts).softmax(-1)[0, 0],
        torch.rand(1, 3, 40, 40, dtype=torch.float64),
    )


def test_vlm_loads_a_saved_checkpoint(tmp_path):
    from transformers import CLIPImageProcessorPil

    vlm = build_vlm("tiny")
    clip = vlm.models[0]
    clip.save_pretrained(tmp_path / "clip")
    tiny_clip_tokenizer().save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    loaded = build_vlm(str(tmp_path / "clip"))
    x = torch.rand(2, 1, 64, 64)
    assert torch.allclose(vlm.embed_images(x), loaded.embed_images(x), atol=1e-6)
    assert torch.allclose(vlm.embed_texts(["a lesion"]), loaded.embed_texts(["a lesion"]), atol=1e-6)
    with pytest.raises(ModelError, match="cannot load VLM"):
        build_vlm(str(tmp_path / "missing"))


def test_open_clip_without_the_extra_gives_a_clear_error():
    pytest.importorskip("torch")
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match=r"needs open_clip: pip install 'craft-ray\[openclip\]'"):
            build_vlm("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    else:
        pytest.skip("open_clip is installed; the hub checkpoint is not reachable offline")


def test_mllm_p_yes_is_batched_consistently_and_differentiable():
    mllm = tiny_llava()
    torch.manual_seed(0)
    x = torch.rand(3, 3, 48, 48, requires_grad=True)
    questions = [
        "Is the heart enlarged?",
        "Are both costophrenic angles sharp and clear?",
        "Is there a lesion?",
    ]
    batched = mllm.p_yes(x, questions)
    assert batched.shape == (3,) and ((batched > 0) & (batched < 1)).all()
    singles = torch.stack([mllm.p_yes(x[i : i + 1], [q])[0] for i, q in enumerate(questions)])
    assert torch.allclose(batched, singles, atol=1e-5)  # left padding keeps the answer position
    batched.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_qwen2_vl_pixel_adapter_matches_the_processor():
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    adapter = pixel_adapter_for(processor)
    assert isinstance(adapter, Qwen2VLPixels) and adapter.target_size(56, 84) == (56, 84)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (56, 84, 3), dtype=np.uint8)  # already at a valid size: no resampling
    expected = processor(images=[Image.fromarray(arr)], return_tensors="pt")
    got = adapter(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255)
    assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])
    assert torch.allclose(got["pixel_values"], expected["pixel_values"].float(), atol=1e-4)


def test_remote_mllm_matches_local_scores_over_http():
    mllm = tiny_llava()
    endpoint = TinyMLLMEndpoint(mllm)
    try:
        remote = build_mllm(endpoint.url)
        assert isinstance(remote, RemoteMLLMScorer)
        # a random tiny model spreads its mass over the whole vocabulary: ask for all of it
        # (real instruction-tuned MLLMs put yes/no in the top 20 that endpoints allow)
        remote.top_logprobs = len(mllm.processor.tokenizer)
        torch.manual_seed(1)
        x = (torch.rand(2, 3, 32, 32) * 255).round() / 255  # PNG-exact pixels
        questions = ["Is the heart enlarged?", "Is there a lesion?"]
        got = remote.p_yes(x, questions)
        assert remote.model == "tiny-llava"
        with torch.no_grad():
            expected = mllm.p_yes(x, questions)
        assert torch.allclose(got, expected, atol=1e-4)
    finally:
        endpoint.close()
    broken = TinyMLLMEndpoint(mllm, broken=True)
    try:
        with pytest.raises(EndpointError, match="still failing after 2 retries"):
            RemoteMLLMScorer(broken.url, model="m", retries=2, backoff=0).p_yes(
                torch.rand(1, 3, 8, 8), ["Is it?"]
            )
        assert broken.posts == 3  # the first try and two retries
    finally:
        broken.close()
    assert png_data_url(torch.zeros(1, 4, 4)).startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("rank", "alpha", "targets"),
    [
        (4, 8.0, ("to_q", "to_k", "to_v", "to_out.0")),
        (4, 16.0, ("to_q", "to_k", "to_v", "to_out.0")),
        (2, 16.0, ("to_k", "to_v")),
    ],
)
def test_lora_with_alpha_not_rank_reloads_at_the_trained_strength(tmp_path, rank, alpha, targets):
    """The saved file carries rank, alpha and targets, so diffusers' loader scales the adapter as trained."""
    trained = build_diffusion("tiny")
    params = add_lora(trained.unet, rank=rank, alpha=alpha, targets=targets)
    with torch.no_grad():
        for p in params:
            p.add_(0.3)
    expected = generate_chest(trained.pipeline())
    save_lora(trained.unet, tmp_path / "lora")
    base = build_diffusion("tiny").pipeline()
    before = generate_chest(base)
    load_lora_into(base, tmp_path / "lora")
    after = generate_chest(base)
    assert np.abs(expected - before).max() > 1e-3
    np.testing.assert_allclose(after, expected, atol=1e-5)


def test_remote_mllm_retries_transient_errors_with_backoff():
    """A moment of 503s (a restarting or overloaded server) costs retries, not the answer."""
    mllm = tiny_llava()
    flaky = TinyMLLMEndpoint(mllm, fail_first=2)
    try:
        remote = RemoteMLLMScorer(flaky.url, model="m", retries=3, backoff=0, concurrency=1)
        remote.top_logprobs = len(mllm.processor.tokenizer)
        x = torch.zeros(1, 3, 16, 16)
        got = remote.p_yes(x, ["Is there a lesion?"])
        with torch.no_grad():
            assert torch.allclose(got, mllm.p_yes(x, ["Is there a lesion?"]), atol=1e-4)
        assert flaky.posts == 3
    finally:
        flaky.close()
