"""The blinded reader-study web app: a Ray Serve deployment with a FastAPI ingress.

    GET  /                                     the page (HTML + JS + CSS served from here: no CDN, no build)
    GET  /healthz
    GET  /api/readers/{reader}/progress        answered / total, the next pair, the last answered pair
    GET  /api/readers/{reader}/pairs/{pair}    one pair (label set, image URLs, findings, the reader's answer)
    POST /api/readers/{reader}/answers         {pair_id, choice, wrong_left, wrong_right, time_ms, change}
    GET  /api/readers/{reader}/images/{image}  a PNG, by opaque id

Every /api route needs the reader's access token (`Authorization: Bearer <token>`, made at
`craft study create` or `craft study token`); the page sends it, and fetches the images with it.
Errors are JSON `{"detail": ...}`: 403 reader not on the access list or token missing or wrong (the
same answer for both, so reader ids cannot be probed), 404 unknown pair or image,
409 pair already answered (send change=true), 422 malformed body or findings not of the pair.
Responses carry opaque ids only: the app never reads key.parquet, so it cannot leak a method.

`serve run serve/study.yaml`, `serve run craft_ray.serving.study_app:build_app study=DIR`, or
`craft study serve --study DIR`.
"""

# No `from __future__ import annotations` here: FastAPI must see the body model class itself on the
# ingress methods (Serve rebinds them), not a string, or the body is taken for a query parameter.
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from craft_ray.errors import StudyError
from craft_ray.study.layout import StudyDir
from craft_ray.study.readers import InvalidAnswer, NotOnAccessList, ReaderDesk, UnknownItem
from craft_ray.study.store import AlreadyAnswered

WEB_FILES = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
STATUS = {NotOnAccessList: 403, UnknownItem: 404, AlreadyAnswered: 409, InvalidAnswer: 422}

api = FastAPI(title="reader study", docs_url=None, redoc_url=None, openapi_url=None)


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair_id: str = Field(min_length=1, max_length=64)
    choice: str = Field(pattern="^(left|right|none)$")
    wrong_left: list[str] = Field(default_factory=list, max_length=64)
    wrong_right: list[str] = Field(default_factory=list, max_length=64)
    time_ms: int = Field(ge=0, le=24 * 3600 * 1000)
    change: bool = False


@api.exception_handler(StudyError)
async def _study_error(request: Request, exc: StudyError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=STATUS.get(type(exc), 400))


def reader_token(authorization: Annotated[str | None, Header()] = None) -> str | None:
    """The reader's access token from 'Authorization: Bearer <token>' (None when absent)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


Token = Annotated[str | None, Depends(reader_token)]


def _web(name: str) -> bytes:
    return resources.files("craft_ray.study").joinpath("web", name).read_bytes()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
@serve.ingress(api)
class StudyApp:
    def __init__(self, study: str):
        self.desk = ReaderDesk(study)
        self.web = {route: (_web(name), media) for route, (name, media) in WEB_FILES.items()}

    @api.get("/")
    def index(self) -> Response:
        return self._web("/")

    @api.get("/app.js")
    def script(self) -> Response:
        return self._web("/app.js")

    @api.get("/style.css")
    def style(self) -> Response:
        return self._web("/style.css")

    def _web(self, route: str) -> Response:
        body, media = self.web[route]
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    @api.get("/healthz")
    def healthz(self) -> dict:
        replica = serve.get_replica_context().replica_id.unique_id
        return {"status": "ok", "pairs": len(self.desk.pairs), "replica": replica}

    @api.get("/api/readers/{reader}/progress")
    def progress(self, reader: str, token: Token) -> dict:
        return self.desk.progress(reader, token)

    @api.get("/api/readers/{reader}/pairs/{pair_id}")
    def pair(self, reader: str, pair_id: str, token: Token) -> dict:
        return self.desk.view(reader, token, pair_id)

    @api.post("/api/readers/{reader}/answers", status_code=201)
    def answer(self, reader: str, body: AnswerBody, token: Token) -> dict:
        saved = self.desk.answer(
            reader,
            token,
            body.pair_id,
            body.choice,
            body.wrong_left,
            body.wrong_right,
            body.time_ms,
            body.change,
        )
        return {"answer": saved.public(), "progress": self.desk.progress(reader, token)}

    @api.get("/api/readers/{reader}/images/{image_id}")
    def image(self, reader: str, image_id: str, token: Token) -> FileResponse:
        # private: a shared cache must not hand one reader's image to a request without the token
        path = self.desk.image(reader, token, image_id)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})


class StudyAppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    study: str = Field(description="study directory (craft study create); relative to the working directory")
    num_replicas: int = Field(1, ge=1, le=16)


def build_app(args: dict) -> serve.Application:
    """Serve application builder (`serve run` config `args`, or `key=value` on its command line)."""
    parsed = StudyAppArgs.model_validate(args)
    root = StudyDir(Path(parsed.study)).root  # checked and made absolute here, before replicas start
    return StudyApp.options(num_replicas=parsed.num_replicas).bind(str(root))
