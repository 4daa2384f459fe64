"""The CAS evaluator as a Ray Serve application (serve/evaluator.yaml).

Routes: `POST /v1/cas`, `GET /v1/labels`, `GET /healthz`. Items from concurrent requests are
scored together (`@serve.batch`, sizes from the YAML); bad input is answered with a 4xx JSON
error naming the problem and never reaches the model. Work per request is bounded before it is
done: the body's size (from `Content-Length`, then while reading), the item count, each image's
bytes and pixels and the request's decoded pixels; JSON parsing and image decoding run in a worker
thread, so a large request never stalls the replica's event loop. An item that fails while scored
with other callers' items fails alone. Authentication is stated in the YAML (`auth`): `none`, or
the environment variable holding the bearer key, which must then be set.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from craft_ray.serving.evaluator_config import api_key, load_evaluator_config
from craft_ray.serving.http_io import ItemFailure, RequestError, read_body

if TYPE_CHECKING:
    from craft_ray.serving.cas_requests import CASItem
    from craft_ray.serving.cas_scoring import Outcome

# torch and the models are imported in the replica, not at module import: Serve's task that builds
# the app (and a config error there) does not wait for them

logger = logging.getLogger("ray.serve")
api = FastAPI(title="craft-ray CAS evaluator", docs_url=None, redoc_url=None)
RETRY_AFTER_S = 10  # what a 503 (the MLLM endpoint down) tells clients to wait before asking again


@api.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.payload(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("CAS evaluator: internal error")
    message = f"internal error: {type(exc).__name__}: {exc}"
    return JSONResponse({"error": {"message": message, "type": "internal", "code": 500}}, status_code=500)


def _device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def answer(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The results of one request, or the error the whole request gets: 503 (with Retry-After) when
    the MLLM endpoint is down, 422 naming the item the evaluator refused, the failure's own status
    when no item could be scored. Otherwise a failed item holds `{"error": ...}` in its slot."""
    failures = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, ItemFailure)]
    for kind in ("unavailable", "input"):
        for i, failure in failures:
            if failure.kind == kind:
                headers = {"Retry-After": str(RETRY_AFTER_S)} if kind == "unavailable" else None
                field = f"items[{i}]"
                raise RequestError(
                    f"{field}: {failure.message}", failure.status, field, headers, kind=failure.kind
                )
    if failures and len(failures) == len(outcomes):
        i, failure = failures[0]
        raise RequestError(f"items[{i}]: {failure.message}", failure.status, f"items[{i}]", kind=failure.kind)
    return [o.payload() if isinstance(o, ItemFailure) else o for o in outcomes]


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(api)
class CASEvaluatorService:
    def __init__(self, args: dict[str, Any] | None = None):
        self.config = load_evaluator_config(args)
        self.api_key = api_key(self.config.auth, os.environ)  # fails closed: no key, no service
        from craft_ray.knowledge.labels import get_dataset
        from craft_ray.serving.cas_requests import parse_cas_request
        from craft_ray.serving.cas_scoring import ServedEvaluator, score_items

        self.parse, self.score_items = parse_cas_request, score_items
        device = _device(self.config.device)
        self.evaluators = {
            name: ServedEvaluator.load(name, served, device) for name, served in self.config.datasets.items()
        }
        self.specs = {name: get_dataset(name) for name in self.evaluators}
        self.sizes = {name: served.evaluator.input_size for name, served in self.evaluators.items()}
        self.score_batch.set_max_batch_size(self.config.batching.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(self.config.batching.batch_wait_timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas")  # keeps the loop free
        # decoding apart from scoring: a large upload never waits behind a batch, nor a batch behind it
        self.decoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cas-decode")
        logger.info(
            "CAS evaluator: datasets %s on %s, batches of up to %d, API key %s",
            list(self.evaluators),
            device,
            self.config.batching.max_batch_size,
            "required" if self.api_key else "not required (auth: none)",
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
        limits = self.config.limits
        raw = await read_body(request, limits.max_body_bytes)
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(self.decoders, self.parse, raw, self.specs, limits, self.sizes)
        del raw
        outcomes = await asyncio.gather(*(self.score_batch((parsed.dataset, item)) for item in parsed.items))
        results = answer(outcomes)
        for result, item in zip(results, parsed.items, strict=True):  # say what was done to each image
            result["preprocessing"] = item.preprocessing
        return {"results": results, "evaluator": self.evaluators[parsed.dataset].spec.to_dict()}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def score_batch(self, jobs: list[tuple[str, CASItem]]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.score_items, self.evaluators, jobs)


def build_app(args: dict[str, Any] | None = None):
    """`import_path: craft_ray.serving.evaluator_app:build_app`; `args:` are EvaluatorAppConfig.
    Fails at `serve run` time, naming the field, not in a replica: a malformed config, or a key
    variable that is not set where the app is built (the replicas check it again in theirs)."""
    config = load_evaluator_config(args)
    api_key(config.auth, os.environ)
    return CASEvaluatorService.bind(args or {})
