"""HTTP-level pieces of the services, light to import (no torch): the errors they answer with as
JSON (a whole request's, one item's) and the size-capped body reader."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.requests import Request

from craft_ray.errors import CraftError, EndpointError, ScoringError

logger = logging.getLogger("ray.serve")


class RequestError(Exception):
    """A bad request: answered with `status` and a JSON error naming the problem."""

    def __init__(
        self,
        message: str,
        status: int = 422,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        kind: str = "invalid_request",
    ):
        super().__init__(message)
        self.message, self.status, self.field = message, status, field
        self.headers, self.kind = headers or {}, kind

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "field": self.field,
                "code": self.status,
            }
        }


@dataclass
class ItemFailure:
    """Why one item could not be scored; it takes that item's result slot, never its neighbours'.

    kind: "unavailable" (the MLLM endpoint stayed down: 503), "input" (the evaluator refused the
    item: 422), "model" (the model or endpoint refused or gave no usable answer for it: 502),
    "internal" (a bug: 500)."""

    kind: str
    message: str

    STATUS: ClassVar[dict[str, int]] = {"unavailable": 503, "input": 422, "model": 502, "internal": 500}

    @property
    def status(self) -> int:
        return self.STATUS[self.kind]

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}

    @classmethod
    def of(cls, exc: Exception) -> ItemFailure:
        if isinstance(exc, EndpointError):
            return cls("unavailable", str(exc))
        if isinstance(exc, ScoringError):
            return cls("input", str(exc))
        if isinstance(exc, CraftError):
            return cls("model", str(exc))
        logger.exception("CAS evaluator: internal error while scoring an item")
        return cls("internal", f"internal error: {type(exc).__name__}: {exc}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes, judged by its `Content-Length` before a byte is read: over
    the limit is 413, no length (a chunked upload) 411, since Ray Serve's proxy hands a replica the
    chunks it has buffered in bulk, so a stream cannot be stopped at the limit inside the replica.
    Reading is capped too, should a body outgrow its header."""
    length = request.headers.get("content-length")
    if length is None:
        raise RequestError("send the body with a Content-Length header (chunked uploads are refused)", 411)
    if not length.strip().isdigit():
        raise RequestError(f"Content-Length {length!r} is not a number", status=400)
    if int(length) > limit:
        raise RequestError(f"body is {int(length)} bytes, over the limit of {limit}", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"body is over the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)
