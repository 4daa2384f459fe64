"""HTTP clients: `MLLMClient` for any OpenAI-compatible MLLM endpoint (serve/mllm.yaml,
serve/mllm-cpu.yaml, vLLM, ...) and `CASClient` for the CAS evaluator service."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import requests
import torch
from PIL import Image

from craft_ray.errors import CraftError, ModelError


def _error_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


class _HTTP:
    def __init__(self, base_url: str, api_key: str | None, timeout: float):
        self.base_url, self.timeout = base_url.rstrip("/").removesuffix("/v1"), timeout
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, route: str, error: type[CraftError] = CraftError, **kwargs) -> Any:
        url = self.base_url + route
        try:
            resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise error(f"{url}: cannot connect ({type(exc).__name__})") from None
        if resp.status_code >= 400:
            failure = error(f"{url}: HTTP {resp.status_code}: {_error_message(resp)}")
            failure.status = resp.status_code
            raise failure
        try:
            return resp.json()
        except ValueError:
            raise error(f"{url}: the answer is not JSON") from None


@dataclass
class JSONAnswer:
    value: Any | None  # None when no attempt gave a valid answer
    problems: list[str] = field(default_factory=list)  # what was wrong with each failed attempt
    attempts: int = 0


class MLLMClient:
    """A small OpenAI chat client: `ask`, `yes_probability`, `chat_json`."""

    def __init__(
        self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 120
    ):
        self.http = _HTTP(base_url, api_key, timeout)
        self.base_url, self.api_key, self._model = self.http.base_url, api_key, model

    @property
    def model(self) -> str:
        if self._model is None:
            models = self.http.request("GET", "/v1/models", ModelError).get("data") or []
            if not models:
                raise ModelError(f"{self.base_url}/v1/models lists no model")
            self._model = str(models[0]["id"])
        return self._model

    def chat(self, messages: list[dict], **params: Any) -> dict:
        body = {"model": self.model, "messages": messages, **params}
        return self.http.request("POST", "/v1/chat/completions", ModelError, json=body)

    @staticmethod
    def user_message(text: str, image: torch.Tensor | None = None) -> list[dict]:
        parts: list[dict] = [{"type": "text", "text": text}]
        if image is not None:
            from craft_ray.models.mllm import png_data_url

            parts.insert(0, {"type": "image_url", "image_url": {"url": png_data_url(image)}})
        return [{"role": "user", "content": parts}]

    def ask(
        self,
        question: str,
        image: torch.Tensor | None = None,
        max_tokens: int = 128,
        temperature: float = 0.0,
    ) -> str:
        resp = self.chat(self.user_message(question, image), max_tokens=max_tokens, temperature=temperature)
        return resp["choices"][0]["message"]["content"] or ""

    def yes_probability(self, image: torch.Tensor, question: str) -> float:
        """P(yes) from the first answer token's logprobs, as the CAS evaluation path asks it."""
        from craft_ray.models.mllm import RemoteMLLMScorer

        scorer = RemoteMLLMScorer(self.base_url, self.model, self.api_key, self.http.timeout)
        return float(scorer.p_yes(image[None], [question])[0])

    def chat_json(
        self,
        prompt: str,
        schema: dict,
        name: str = "answer",
        attempts: int = 3,
        max_tokens: int = 512,
        temperature: float = 0.2,
        check: Callable[[Any], str | None] | None = None,
        seed: int = 0,
    ) -> JSONAnswer:
        """Ask for JSON matching `schema` (`response_format` json_schema); validate each answer here
        too (endpoints may truncate or ignore the schema) plus `check`; retry with other seeds. An
        endpoint that constrains decoding and finds no complete answer within `max_tokens` says so
        with HTTP 422 (serve/mllm-cpu.yaml does): that attempt failed, like an invalid answer."""
        answer = JSONAnswer(None)
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
        for attempt in range(attempts):
            answer.attempts = attempt + 1
            try:
                resp = self.chat(
                    self.user_message(prompt),
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed + attempt,
                    response_format=response_format,
                )
            except ModelError as exc:
                if getattr(exc, "status", None) != 422:
                    raise
                answer.problems.append(f"no complete answer: {exc}")
                continue
            problem, value = _parse_json(resp["choices"][0]["message"]["content"] or "", schema)
            if problem is None and check is not None:
                problem = check(value)
            if problem is None:
                answer.value = value
                return answer
            answer.problems.append(problem)
        return answer


def _parse_json(text: str, schema: dict) -> tuple[str | None, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg}): {text[:80]!r}", None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"does not match the schema: {exc.message[:120]}", None
    return None, value


ImageInput = str | Path | bytes | Image.Image | torch.Tensor


def encode_image(image: ImageInput) -> str:
    """A path, encoded bytes, a PIL image or a (C, H, W) tensor in [0, 1] -> base64 PNG/JPEG."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise CraftError(f"image not found: {path}")
        data = path.read_bytes()
    elif isinstance(image, bytes):
        data = image
    elif isinstance(image, torch.Tensor):
        from craft_ray.models.mllm import png_data_url

        return png_data_url(image).split(",", 1)[1]
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    return base64.b64encode(data).decode()


class CASClient:
    """Client of the CAS evaluator service (serve/evaluator.yaml)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120):
        self.http = _HTTP(base_url, api_key, timeout)

    def health(self) -> dict:
        return self.http.request("GET", "/healthz")

    def labels(self) -> dict:
        return self.http.request("GET", "/v1/labels")["datasets"]

    def score(self, dataset: str, items: Sequence[tuple[ImageInput, Sequence[str]]]) -> dict:
        """{'results': [one per item, in order], 'evaluator': {...}}. An item the service could not
        score (its MLLM refused it, ...) holds {'error': {'message', 'type', 'code'}} instead."""
        body = {
            "dataset": dataset,
            "items": [{"image": encode_image(image), "labels": list(labels)} for image, labels in items],
        }
        return self.http.request("POST", "/v1/cas", json=body)
