"""Multimodal-LLM yes/no scorers (VQAScore style): P(yes | image, question).

- `MLLMScorer`: a local transformers image-text-to-text model (LLaVA / LLaVA-Med or Qwen2-VL
  families from a path; a tiny LLaVA built in code for tests). P(yes) comes from the next-token
  logits of "yes" against "no" and is differentiable with respect to the pixels: the processor
  only builds the token ids (from a placeholder image of the same size), and the pixel values are
  computed in torch by an adapter that reproduces the model's image processor.
- `RemoteMLLMScorer`: the same question to an OpenAI-compatible endpoint (vLLM, Ray Serve LLM)
  with `logprobs`; evaluation only, not differentiable. When 'yes' or 'no' is outside the top 20
  it asks once more for the whole vocabulary (`top_logprobs: -1`), which endpoints configured
  with `max_logprobs: -1` serve (serve/mllm-cpu.yaml does): then P(yes) is exact. Transient
  failures (connection errors, timeouts, HTTP 429/5xx) are retried with exponential backoff
  (urllib3's `Retry`); if they persist, an `EndpointError` says so (training counts such steps
  apart from non-finite ones).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
import torch
import torch.nn.functional as F
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from craft_ray.data.images import centre_square_tensor
from craft_ray.errors import EndpointError, ModelError, ScoringError
from craft_ray.models.tokenizer import tiny_chat_tokenizer
from craft_ray.models.vlm import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, prepare_pixels

ANSWER_SUFFIX = " Answer yes or no."
WHOLE_VOCABULARY = -1  # top_logprobs=-1: every token (vLLM's convention)
YES_WORDS, NO_WORDS = ("Yes", "yes", " Yes", " yes"), ("No", "no", " No", " no")
RETRY_STATUS = (429, 500, 502, 503, 504)  # worth asking again: overload, restarts, gateways
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}USER: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class ClipPixels:
    """LLaVA-style image processors: one square image per sample, (B, 3, S, S)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": prepare_pixels(images, self.size, self.mean, self.std)}


@dataclass
class Qwen2VLPixels:
    """Qwen2-VL image processors: resize to multiples of patch*merge, normalise, flatten patches
    in the processor's (t, h/m, w/m, m, m, c, tp, p, p) order."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    mean: Sequence[float]
    std: Sequence[float]

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        # the PIL module has the same smart_resize without importing torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        return smart_resize(
            height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels
        )

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        h, w = self.target_size(*images.shape[-2:])
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = F.interpolate(images, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        x = (images - mean) / std
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = x.reshape(b, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, tp, -1, -1).reshape(b * gh * gw, 3 * tp * p * p)
        grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=images.device)
        return {"pixel_values": x, "image_grid_thw": grid}


def pixel_adapter_for(image_processor) -> ClipPixels | Qwen2VLPixels:
    name = type(image_processor).__name__
    mean = getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN
    std = getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD
    if name.startswith("Qwen2VL"):
        size = image_processor.size
        get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
        return Qwen2VLPixels(
            image_processor.patch_size,
            image_processor.merge_size,
            image_processor.temporal_patch_size,
            get("shortest_edge"),
            get("longest_edge"),
            mean,
            std,
        )
    if name.startswith("CLIPImageProcessor"):
        crop = image_processor.crop_size
        side = crop["height"] if isinstance(crop, dict) else crop.height
        return ClipPixels(int(side), mean, std)
    raise ModelError(
        f"no differentiable pixel adapter for image processor {name} (supported: CLIP/LLaVA, Qwen2-VL)"
    )


def _token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] != tokenizer.unk_token_id and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


class MLLMScorer(torch.nn.Module):
    def __init__(self, model, processor, name: str):
        super().__init__()
        self.model, self.processor, self.name = model, processor, name
        self.adapter = pixel_adapter_for(processor.image_processor)
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # the answer position is the last one for every row
        self.yes_ids, self.no_ids = _token_ids(tokenizer, YES_WORDS), _token_ids(tokenizer, NO_WORDS)
        if not self.yes_ids or not self.no_ids:
            raise ModelError(f"MLLM {name!r}: its tokenizer has no single-token 'yes'/'no'")
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def input_size(self) -> int | None:
        """Side of the square image a LLaVA-style model sees; None for Qwen2-VL (its adapter resizes
        any size to patch multiples)."""
        return getattr(self.adapter, "size", None)

    def _prompt(self, question: str) -> str:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": question + ANSWER_SUFFIX}],
            }
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def next_token_logprobs(self, images: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        """(B, vocab) log-probabilities of the first answer token. Differentiable in `images`."""
        if images.shape[0] != len(questions):
            raise ScoringError(f"{images.shape[0]} images but {len(questions)} questions")
        images = centre_square_tensor(
            images
        )  # before the placeholders: Qwen2-VL's token count follows the size
        h, w = images.shape[-2:]
        placeholders = [Image.new("RGB", (int(w), int(h)))] * len(questions)
        enc = self.processor(
            text=[self._prompt(q) for q in questions], images=placeholders, padding=True, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in enc.items() if k not in ("pixel_values", "image_grid_thw")}
        dtype = next(self.model.parameters()).dtype
        inputs.update(self.adapter(images.to(self.device, dtype)))
        logits = self.model(**inputs).logits[:, -1, :]
        return torch.log_softmax(logits.float(), dim=-1)

    def p_yes(self, images: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        logp = self.next_token_logprobs(images, questions)
        yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logp[:, self.no_ids], dim=-1)
        return torch.sigmoid(yes - no)


def tiny_llava(seed: int = 0) -> MLLMScorer:
    """A LLaVA-architecture model a few hundred k parameters big, with a word-level tokenizer."""
    # the PIL backend: the default torchvision one is not installable on CPU machines
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tiny_chat_tokenizer()
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_index=image_token,
        image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=TINY_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return MLLMScorer(model, processor, "tiny")


def png_data_url(image: torch.Tensor) -> str:
    """(C, H, W) in [0, 1] -> data:image/png;base64,..."""
    arr = image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class RemoteMLLMScorer:
    """P(yes) from an OpenAI-compatible /v1/chat/completions endpoint with top logprobs."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        top_logprobs: int = 20,
        concurrency: int = 8,
        retries: int = 4,
        backoff: float = 0.5,
    ):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model, self.timeout, self.top_logprobs, self.concurrency = (
            model,
            timeout,
            top_logprobs,
            concurrency,
        )
        self.retries = retries
        self.name = f"remote:{self.base_url}"
        self.session = requests.Session()
        retry = Retry(
            total=retries,
            backoff_factor=backoff,  # waits 0, 2b, 4b, ... seconds between attempts
            status_forcelist=RETRY_STATUS,
            allowed_methods=None,  # POST too: asking a question again has no side effect
            raise_on_status=False,  # the last answer comes back and says what went wrong
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _endpoint_error(self, route: str, exc: requests.RequestException) -> ModelError:
        """Transient failures that outlived the retries -> EndpointError; others (4xx) -> ModelError."""
        status = exc.response.status_code if exc.response is not None else None
        if status is None or status in RETRY_STATUS:
            return EndpointError(
                f"MLLM endpoint {self.base_url}{route}: still failing after {self.retries} retries ({exc})"
            )
        return ModelError(f"MLLM endpoint {self.base_url}{route}: {exc}")

    def _model_name(self) -> str:
        if self.model is None:
            models = self._get("/v1/models").get("data") or []
            if not models:
                raise ModelError(f"{self.base_url}/v1/models lists no model; set model.mllm_model")
            self.model = models[0]["id"]
        return self.model

    def _get(self, route: str) -> dict:
        try:
            resp = self.session.get(self.base_url + route, timeout=self.timeout)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise self._endpoint_error(route, exc) from None
        try:
            return resp.json()
        except ValueError as exc:
            raise ModelError(
                f"MLLM endpoint {self.base_url}{route}: the answer is not JSON ({exc})"
            ) from None

    def _top_logprobs(self, image: torch.Tensor, question: str, k: int) -> list[dict] | None:
        """The first answer token's top-k logprobs; None when the endpoint refuses k (HTTP 400)."""
        body = {
            "model": self._model_name(),
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": png_data_url(image)}},
                        {"type": "text", "text": question + ANSWER_SUFFIX},
                    ],
                }
            ],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": k,
        }
        route = "/v1/chat/completions"
        try:
            resp = self.session.post(self.base_url + route, json=body, timeout=self.timeout)
            if resp.status_code == 400 and k == WHOLE_VOCABULARY:
                return None
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise self._endpoint_error(route, exc) from None
        try:
            return resp.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelError(
                f"MLLM endpoint {self.base_url}: no usable logprobs in the answer ({exc})"
            ) from None

    @staticmethod
    def _mass(top: list[dict]) -> dict[str, float]:
        mass = {"yes": 0.0, "no": 0.0}
        for entry in top:
            word = str(entry.get("token", "")).strip().lower()
            if word in mass:
                mass[word] += math.exp(float(entry["logprob"]))
        return mass

    def _ask(self, image: torch.Tensor, question: str) -> float:
        mass = self._mass(self._top_logprobs(image, question, self.top_logprobs))
        if 0.0 in mass.values() and self.top_logprobs != WHOLE_VOCABULARY:
            # 'yes' or 'no' is outside the top k: ask for the whole vocabulary (vLLM serves it
            # with engine_kwargs max_logprobs: -1, as serve/mllm-cpu.yaml does); an endpoint that
            # refuses keeps the top-k answer
            wider = self._top_logprobs(image, question, WHOLE_VOCABULARY)
            if wider is not None:
                mass = self._mass(wider)
        if mass["yes"] + mass["no"] == 0.0:
            raise ModelError(
                f"MLLM endpoint {self.base_url}: neither 'yes' nor 'no' among the top {self.top_logprobs} tokens"
            )
        return mass["yes"] / (mass["yes"] + mass["no"])

    def p_yes(self, images: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
        if images.shape[0] != len(questions):
            raise ScoringError(f"{images.shape[0]} images but {len(questions)} questions")
        self._model_name()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            probs = list(pool.map(self._ask, images, questions))
        return torch.tensor(np.asarray(probs, dtype=np.float32))


def build_mllm(spec: str | None, model_name: str | None = None) -> MLLMScorer | RemoteMLLMScorer | None:
    """None | 'tiny' | 'http(s)://host:port' (OpenAI-compatible) | a local path or hub id."""
    if spec is None:
        return None
    if spec == "tiny":
        return tiny_llava()
    if spec.startswith(("http://", "https://")):
        return RemoteMLLMScorer(spec, model_name)
    try:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(spec)
        processor = AutoProcessor.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load MLLM {spec!r}: {exc}") from None
    return MLLMScorer(model, processor, spec)
