"""CLIP-family image-text scorers, differentiable with respect to image pixels.

Images come in as float tensors (B, C, H, W) in [0, 1]; resizing and normalisation happen in
torch, so gradients flow from image-text similarities back to the pixels (the reward path).
Backends: transformers `CLIPModel` (a tiny or small config built in code, or a checkpoint path /
hub id such as a PubMedCLIP-style model) and, optionally, open_clip checkpoints such as BiomedCLIP
(`open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`; needs the
`openclip` extra, which needs torchvision: GPU nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from craft_ray.data.images import centre_square_tensor
from craft_ray.errors import ModelError
from craft_ray.model_names import missing_local_path
from craft_ray.models.phantom import is_phantom, phantom_vlm_dir
from craft_ray.models.tokenizer import text_config_ids, tiny_clip_tokenizer

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VLM_PRESETS = {
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        vision=dict(
            image_size=32,
            patch_size=4,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=32,
    ),
    "small": dict(
        text=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=6),
        vision=dict(
            image_size=64,
            patch_size=8,
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=6,
        ),
        projection_dim=256,
    ),
}


def prepare_pixels(
    images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """[0, 1] images -> model input: grey to RGB, centre square, antialiased bicubic resize, normalise.
    Differentiable. The square crop is the one image path's (craft_ray.data.images): scoring paths
    hand over images already at `size`, so only direct callers with other tensors meet it here."""
    images = centre_square_tensor(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


class VLMScorer(torch.nn.Module):
    """Normalised image and text embeddings and image-text logits of a CLIP-style model.

    Text embeddings are computed without gradient and cached per text: the reward only needs
    gradients with respect to pixels, and the same checklist phrases recur every step.
    """

    def __init__(
        self,
        encode_image: Callable[[torch.Tensor], torch.Tensor],
        encode_text: Callable[[list[str]], torch.Tensor],
        logit_scale: torch.Tensor,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        modules: list[torch.nn.Module],
        name: str,
    ):
        super().__init__()
        self._encode_image, self._encode_text = encode_image, encode_text
        self.models = torch.nn.ModuleList(modules)
        self.logit_scale_value = logit_scale
        self.image_size, self.mean, self.std, self.name = image_size, tuple(mean), tuple(std), name
        self._text_cache: dict[str, torch.Tensor] = {}
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.models.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.models.parameters()).dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.logit_scale_value.exp().clamp(max=100.0)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        # a bf16/fp16 tower resizes and normalises in fp32 (CPU has no bf16 antialiased bicubic)
        work = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
        pixels = prepare_pixels(images.to(self.device, work), self.image_size, self.mean, self.std)
        return F.normalize(self._encode_image(pixels.to(self.dtype)), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for text, emb in zip(missing, F.normalize(self._encode_text(missing), dim=-1), strict=True):
                self._text_cache[text] = emb
        return torch.stack([self._text_cache[t] for t in texts])

    def logits(self, image_emb: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """(B, len(texts)) scaled cosine similarities."""
        return self.logit_scale * image_emb @ self.embed_texts(texts).T.to(image_emb.dtype)

    def to(self, *args, **kwargs):  # noqa: D102 - the text cache lives on the old device
        self._text_cache.clear()
        return super().to(*args, **kwargs)


def _from_clip(model: CLIPModel, tokenizer: CLIPTokenizer, mean, std, name: str) -> VLMScorer:
    def encode_image(pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels).pooler_output

    def encode_text(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(
            texts, padding=True, truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
        )
        tokens = {k: v.to(model.device) for k, v in tokens.items()}
        return model.get_text_features(**tokens).pooler_output

    return VLMScorer(
        encode_image,
        encode_text,
        model.logit_scale,
        model.config.vision_config.image_size,
        mean,
        std,
        [model],
        name,
    )


def _tiny_clip(preset: str, seed: int = 0) -> VLMScorer:
    cfg = VLM_PRESETS[preset]
    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(
            CLIPConfig(
                text_config={**text_config_ids(tokenizer), **cfg["text"]},
                vision_config=cfg["vision"],
                projection_dim=cfg["projection_dim"],
            )
        )
    return _from_clip(model, tokenizer, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preset)


def _open_clip(name: str) -> VLMScorer:
    try:
        import open_clip
    except ImportError as exc:
        raise ModelError(
            f"VLM {name!r} needs open_clip: pip install 'craft-ray[openclip]' (it needs torchvision: GPU nodes) ({exc})"
        ) from None
    model, preprocess = open_clip.create_model_from_pretrained(name)
    tokenizer = open_clip.get_tokenizer(name)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size

    def encode_text(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(next(model.parameters()).device))

    return VLMScorer(
        model.encode_image,
        encode_text,
        model.logit_scale,
        int(size),
        cfg.get("mean", OPENAI_CLIP_MEAN),
        cfg.get("std", OPENAI_CLIP_STD),
        [model],
        f"open_clip:{name}",
    )


def build_vlm(spec: str) -> VLMScorer:
    """'tiny' | 'small' (random, seeded, built in code) | 'phantom:<modality>' (shipped, trained on
    phantoms) | a CLIPModel path or hub id | 'open_clip:<name>'."""
    if spec in VLM_PRESETS:
        return _tiny_clip(spec)
    if spec.startswith("open_clip:"):
        return _open_clip(spec.removeprefix("open_clip:"))
    name, source = spec, str(phantom_vlm_dir(spec)) if is_phantom(spec) else spec
    if missing_local_path(spec):
        raise ModelError(f"cannot load VLM {spec!r}: no such directory")
    try:
        from transformers import AutoImageProcessor

        model = CLIPModel.from_pretrained(source)
        tokenizer = CLIPTokenizer.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load VLM {spec!r} (presets: {', '.join(VLM_PRESETS)}): {exc}") from None
    mean = getattr(processor, "image_mean", None) or OPENAI_CLIP_MEAN
    std = getattr(processor, "image_std", None) or OPENAI_CLIP_STD
    return _from_clip(model.eval(), tokenizer, mean, std, name)
