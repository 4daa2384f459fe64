"""Typed settings of the CAS evaluator service (the `args:` of serve/evaluator.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    max_items: int = Field(32, ge=1, description="items per request")
    max_image_bytes: int = Field(
        32 * 2**20, ge=64, description="encoded size of one image (a 16-bit 4096 x 4096 PNG fits)"
    )
    max_image_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="width x height decoded at most (a decompression-bomb guard); every image is brought "
        "to the evaluator's working size",
    )


class Batching(_Strict):
    max_batch_size: int = Field(16, ge=1, description="images scored together across requests")
    batch_wait_timeout_s: float = Field(0.01, ge=0)


class EvaluatorAppConfig(_Strict):
    datasets: dict[str, DatasetServing] = Field(default_factory=lambda: {"chexpert": DatasetServing()})
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    api_key_env: str | None = Field(
        "CRAFT_EVALUATOR_API_KEY", description="env var holding a bearer key; unset or empty: no key needed"
    )
    device: str = Field("auto", description="auto (GPU when the replica has one) | cpu | cuda")

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
            lines.append(f"{source}: {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None
