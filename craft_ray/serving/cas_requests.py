"""`POST /v1/cas` bodies: parsed and checked item by item, every problem a 4xx naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from craft_ray.knowledge.labels import DatasetSpec
from craft_ray.serving.evaluator_config import Limits
from craft_ray.serving.http_io import RequestError
from craft_ray.serving.images import ImageInputError, prepared_from_base64


@dataclass
class CASItem:
    image: torch.Tensor  # (C, S, S) in [0, 1], C = the dataset's channels, S = the working size
    labels: list[str]
    preprocessing: dict[str, Any] | None = None  # what the image path did (returned with the result)


@dataclass
class CASRequest:
    dataset: str
    items: list[CASItem]


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not JSON ({exc})", status=400) from None
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object, got {type(body).__name__}", status=400)
    return body


def _labels(raw: Any, spec: DatasetSpec, where: str) -> list[str]:
    if not isinstance(raw, list):
        raise RequestError(
            f"{where}.labels must be a list of label names, got {type(raw).__name__}", field=where
        )
    if not raw:
        raise RequestError(f"{where}.labels is empty; give at least one label", field=where)
    bad = [x for x in raw if not isinstance(x, str)]
    if bad:
        raise RequestError(f"{where}.labels must hold strings, got {bad[:3]}", field=where)
    unknown = [x for x in raw if x not in spec.labels]
    if unknown:
        raise RequestError(
            f"{where}.labels: unknown label(s) {unknown} for {spec.name} (known: {', '.join(spec.labels)})",
            field=where,
        )
    return list(dict.fromkeys(raw))


@dataclass
class _Checked:
    """An item whose fields are checked and whose image is not decoded yet."""

    image: str
    labels: list[str]
    where: str


def _check_item(raw: Any, spec: DatasetSpec, where: str) -> _Checked:
    if not isinstance(raw, dict):
        raise RequestError(f"{where} must be an object with image and labels", field=where)
    missing = [k for k in ("image", "labels") if k not in raw]
    if missing:
        raise RequestError(f"{where}: missing field(s) {missing}", field=where)
    labels = _labels(raw["labels"], spec, where)
    if not isinstance(raw["image"], str):
        raise RequestError(f"{where}.image must be a base64 string", field=where)
    return _Checked(raw["image"], labels, where)


def _decode(items: list[_Checked], spec: DatasetSpec, limits: Limits, size: int | None) -> list[CASItem]:
    """Each image through the one image path (windowed to 8 bits, centre square, resized to the
    working size); the pixels decoded for the request, at their own size, are bounded together."""
    out, pixels = [], 0
    for item in items:
        try:
            prepared = prepared_from_base64(
                item.image, spec.channels, limits.max_image_bytes, limits.max_image_pixels, size
            )
        except ImageInputError as exc:
            raise RequestError(f"{item.where}.image: {exc}", status=exc.status, field=item.where) from None
        pixels += prepared.info.width * prepared.info.height
        if pixels > limits.max_request_pixels:
            raise RequestError(
                f"{item.where}.image: the images up to here hold {pixels} pixels, over the limit of "
                f"{limits.max_request_pixels} per request; send fewer or smaller images",
                status=413,
                field=item.where,
            )
        out.append(CASItem(prepared.pixels, item.labels, prepared.info.as_json()))
    return out


def parse_cas_request(
    raw: bytes, specs: dict[str, DatasetSpec], limits: Limits, sizes: dict[str, int] | None = None
) -> CASRequest:
    """Blocking (JSON parsing and image decoding): run it off the event loop. Every structural
    check, `max_items` included, comes before the first image is decoded. `sizes`: each dataset's
    working size (its evaluator's input size); images are brought to it."""
    body = parse_json_body(raw)
    unknown = sorted(set(body) - {"dataset", "items"})
    if unknown:
        raise RequestError(f"unknown field(s) {unknown} (expected dataset, items)")
    dataset = body.get("dataset")
    if not isinstance(dataset, str):
        raise RequestError(
            "missing field 'dataset' (a dataset name)" if dataset is None else "dataset must be a string",
            field="dataset",
        )
    if dataset not in specs:
        raise RequestError(
            f"dataset '{dataset}' is not served here (served: {', '.join(specs)})", field="dataset"
        )
    items = body.get("items")
    if not isinstance(items, list):
        raise RequestError(
            "missing field 'items' (a list)" if items is None else "items must be a list", field="items"
        )
    if not items:
        raise RequestError("items is empty; send at least one image", field="items")
    if len(items) > limits.max_items:
        raise RequestError(
            f"{len(items)} items, over the limit of {limits.max_items} per request", status=413, field="items"
        )
    spec = specs[dataset]
    checked = [_check_item(raw, spec, f"items[{i}]") for i, raw in enumerate(items)]
    return CASRequest(dataset, _decode(checked, spec, limits, (sizes or {}).get(dataset)))
