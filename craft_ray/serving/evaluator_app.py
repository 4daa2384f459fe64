"""The CAS evaluator as a Ray Serve application (serve/evaluator.yaml).

Routes: `POST /v1/cas`, `GET /v1/labels`, `GET /healthz`. Items from concurrent requests are
scored together (`@serve.batch`, sizes from the YAML); bad input is answered with a 4xx JSON
error naming the problem and never reaches the model. An optional bearer key is read from the
environment variable the YAML names (`api_key_env`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from craft_ray.errors import CraftError
from craft_ray.knowledge.labels import get_dataset
from craft_ray.serving.cas_requests import CASItem, RequestError, parse_cas_request
from craft_ray.serving.cas_scoring import ServedEvaluator, score_items
from craft_ray.serving.evaluator_config import load_evaluator_config

logger = logging.getLogger("ray.serve")
api = FastAPI(title="craft-ray CAS evaluator", docs_url=None, redoc_url=None)


@api.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=exc.status)


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("CAS evaluator: internal error")
    message = f"internal error: {type(exc).__name__}: {exc}"
    return JSONResponse({"error": {"message": message, "type": "internal", "code": 500}}, status_code=500)


def _device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(api)
class CASEvaluatorService:
    def __init__(self, args: dict[str, Any] | None = None):
        self.config = load_evaluator_config(args)
        device = _device(self.config.device)
        self.evaluators = {
            name: ServedEvaluator.load(name, served, device) for name, served in self.config.datasets.items()
        }
        self.specs = {name: get_dataset(name) for name in self.evaluators}
        self.sizes = {name: served.evaluator.input_size for name, served in self.evaluators.items()}
        self.score_batch.set_max_batch_size(self.config.batching.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(self.config.batching.batch_wait_timeout_s)
        env = self.config.api_key_env
        self.api_key = (os.environ.get(env) or None) if env else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas")  # keeps the loop free
        logger.info(
            "CAS evaluator: datasets %s on %s, batches of up to %d, API key %s",
            list(self.evaluators),
            device,
            self.config.batching.max_batch_size,
            "required" if self.api_key else "not required",
        )

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise RequestError("missing or wrong API key: send 'Authorization: Bearer <key>'", status=401)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "datasets": list(self.evaluators)}

    @api.get("/v1/labels")
    async def labels(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {"datasets": {name: served.describe() for name, served in self.evaluators.items()}}

    @api.post("/v1/cas")
    async def cas(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        parsed = parse_cas_request(await request.body(), self.specs, self.config.limits, self.sizes)
        results = await asyncio.gather(*(self.score_batch((parsed.dataset, item)) for item in parsed.items))
        for result, item in zip(results, parsed.items, strict=True):  # say what was done to each image
            result["preprocessing"] = item.preprocessing
        return {"results": results, "evaluator": self.evaluators[parsed.dataset].spec.to_dict()}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def score_batch(self, jobs: list[tuple[str, CASItem]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, score_items, self.evaluators, jobs)
        except CraftError as exc:  # the checks above should make this unreachable; stay up anyway
            raise RequestError(f"cannot score: {exc}") from None


def build_app(args: dict[str, Any] | None = None):
    """`import_path: craft_ray.serving.evaluator_app:build_app`; `args:` are EvaluatorAppConfig."""
    load_evaluator_config(args)  # fail at `serve run` time, naming the field, not in a replica
    return CASEvaluatorService.bind(args or {})
