"""OpenAI chat messages -> the transformers chat-template format plus the images they carry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from craft_ray.serving.images import ImageInputError, image_from_base64

MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096


class ChatInputError(ValueError):
    """A chat request that cannot be turned into model inputs (HTTP 400)."""


def _part_dict(part: Any) -> Mapping[str, Any]:
    if isinstance(part, Mapping):
        return part
    if hasattr(part, "model_dump"):
        return part.model_dump()
    raise ChatInputError(f"message content part of type {type(part).__name__} is not supported")


def _image_url(part: Mapping[str, Any]) -> str:
    url = part.get("image_url")
    if isinstance(url, Mapping):
        url = url.get("url")
    if not isinstance(url, str):
        raise ChatInputError("image_url part without a url")
    return url


def convert_part(part: Any, images: list[torch.Tensor], image_size: int | None = None) -> dict[str, str]:
    part = _part_dict(part)
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "image_url":
        try:
            # the one image path (craft_ray.data.images): 8 bits, centre square, the model's size
            url = _image_url(part)
            image = image_from_base64(
                url, None, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, size=image_size, crop=True
            )
            images.append(image)
        except ImageInputError as exc:
            raise ChatInputError(f"image_url: {exc}") from None
        return {"type": "image"}
    raise ChatInputError(f"message content part type {kind!r} is not supported (text, image_url)")


def convert_messages(
    messages: Iterable[Any], image_size: int | None = None
) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Messages with string or list-of-parts content -> ([{'role', 'content': [parts]}], images in
    order of appearance, each the centre square at `image_size` (None: its own side)). Every content
    becomes a list of parts, as multimodal templates expect."""
    converted, images = [], []
    for message in messages:
        message = _part_dict(message)
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant", "developer"):
            raise ChatInputError(f"message role {role!r} is not supported")
        if content is None:
            content = []
        elif isinstance(content, str):
            content = [{"type": "text", "text": content}]
        converted.append({"role": role, "content": [convert_part(p, images, image_size) for p in content]})
    if not converted:
        raise ChatInputError("messages must not be empty")
    return converted, images
