"""Typed settings of the CAS evaluator service (the `args:` of serve/evaluator.yaml)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from craft_ray.config import CAS_DIMENSIONS
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import DATASETS, get_dataset


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetServing(_Strict):
    """One dataset served: either a calibration file (evaluator spec, thresholds, realism
    reference; from `craft cas calibrate`) or an evaluator described inline (no thresholds)."""

    calibration: str | None = Field(None, description="calibration JSON; it names the evaluator")
    labels: list[str] | None = Field(
        None, description="label space scored by pathology fidelity; default all"
    )
    vlm: str = "tiny"
    mllm: str | None = None
    mllm_model: str | None = None
    weights: dict[str, float] | None = None
    checklists: list[str] = Field(default_factory=list, description="overlay checklist files")

    @model_validator(mode="after")
    def _calibration_or_inline(self) -> DatasetServing:
        if self.calibration:
            inline = sorted(k for k in self.model_fields_set if k != "calibration")
            if inline:
                raise ValueError(
                    f"give either calibration or {inline}, not both (the calibration names its evaluator)"
                )
        if self.weights is not None:
            unknown = sorted(set(self.weights) - set(CAS_DIMENSIONS))
            if unknown:
                raise ValueError(
                    f"weights: unknown dimension(s) {unknown} (known: {', '.join(CAS_DIMENSIONS)})"
                )
        return self


class Limits(_Strict):
    """Work one request may cause, each bound checked before the work it bounds."""

    # base64 makes 4 characters of 3 bytes: 64 MiB carries two 18 MB full-resolution 16-bit PNGs
    max_body_bytes: int = Field(
        64 * 2**20, ge=1024, description="request body; Content-Length checked, then read with this cap"
    )
    max_items: int = Field(32, ge=1, description="items per request, checked before any image is decoded")
    # a 16-bit 3000x3000 radiograph as PNG is about 18 MB; 32 MiB takes a 16-bit 4096 x 4096 one
    max_image_bytes: int = Field(32 * 2**20, ge=64, description="encoded size of one image")
    max_image_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="width x height decoded at most (a decompression-bomb guard, checked from the header); "
        "every image is brought to the evaluator's working size",
    )
    max_request_pixels: int = Field(
        2 * 8192 * 8192,
        ge=1,
        description="pixels decoded (at their own size) for all images of one request together",
    )


class KeyAuth(_Strict):
    api_key_env: str = Field(description="environment variable holding the bearer key /v1/* requires")


AUTH_HELP = "say `auth: none` (no key: for 127.0.0.1) or `auth: {api_key_env: VARIABLE}`"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _auth(value: Any) -> Literal["none"] | KeyAuth:
    """One clear message per mistake (a plain union would report both alternatives)."""
    if value == "none" or isinstance(value, KeyAuth):
        return value
    if isinstance(value, dict):
        if set(value) != {"api_key_env"}:
            raise ValueError(f"expected exactly the key api_key_env, got {sorted(value)}; {AUTH_HELP}")
        name = value["api_key_env"]
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ValueError(f"api_key_env: {name!r} is not an environment variable name")
        return KeyAuth(api_key_env=name)
    raise ValueError(f"{value!r} is not a choice; {AUTH_HELP}")


class Batching(_Strict):
    max_batch_size: int = Field(16, ge=1, description="images scored together across requests")
    batch_wait_timeout_s: float = Field(0.01, ge=0)


class EvaluatorAppConfig(_Strict):
    datasets: dict[str, DatasetServing] = Field(default_factory=lambda: {"chexpert": DatasetServing()})
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    # no default: whether the service needs a key is stated, never implied by a variable being unset
    auth: Literal["none"] | KeyAuth = Field(description=AUTH_HELP)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_choice(cls, value: Any) -> Literal["none"] | KeyAuth:
        return _auth(value)

    device: str = Field("auto", description="auto (GPU when the replica has one) | cpu | cuda")

    @model_validator(mode="before")
    @classmethod
    def _auth_stated(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "api_key_env" in data:
                raise ValueError(f"api_key_env: replaced by auth; {AUTH_HELP}")
            if "auth" not in data:
                raise ValueError(f"auth: missing; {AUTH_HELP}")
        return data

    @model_validator(mode="after")
    def _known_datasets(self) -> EvaluatorAppConfig:
        if not self.datasets:
            raise ValueError("datasets: serve at least one dataset")
        for name, served in self.datasets.items():
            if name not in DATASETS:
                raise ValueError(f"datasets: unknown dataset '{name}' (known: {', '.join(DATASETS)})")
            if served.labels is not None:
                try:
                    get_dataset(name).check_labels(served.labels, where=f"datasets.{name}.labels")
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
        return self


def api_key(auth: Literal["none"] | KeyAuth, environ: Mapping[str, str]) -> str | None:
    """The bearer key the config asks for, from `environ`; None for `auth: none`. A named variable
    that is unset or empty is a ConfigError: the service refuses to start rather than run open."""
    if auth == "none":
        return None
    key = environ.get(auth.api_key_env, "")
    if not key.strip():
        raise ConfigError(
            f"auth.api_key_env: the variable {auth.api_key_env} is not set (or empty) where the evaluator "
            f"starts; export it before `serve run` (or set it in the app's runtime_env), or use auth: none"
        )
    return key.strip()


def load_evaluator_config(args: dict | None, source: str = "evaluator app args") -> EvaluatorAppConfig:
    try:
        return EvaluatorAppConfig.model_validate(args or {})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            msg = (
                "unknown key"
                if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, ")
            )
            lines.append(f"{source}: {loc}: {msg}" if err["loc"] else f"{source}: {msg}")
        raise ConfigError("\n".join(lines)) from None
