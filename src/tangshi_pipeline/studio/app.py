"""The studio's FastAPI application: the page, the JSON API and its OpenAPI description.

Bad input is answered with HTTP 422 and ``{"detail": [{"loc", "field", "msg", "type"}, …]}``, one
entry per bad field (the message names it); a body over ``max_body`` bytes with 413; a full queue
with 503. Nothing else a client sends reaches a 500, and no response ever carries a traceback
(an unexpected error is logged on the server and answered with a one-line 500).

FastAPI's own ``/docs`` page loads Swagger UI from a CDN; the studio serves ``/openapi.json`` and its
own ``/docs`` page (``static/docs.html``), which renders that JSON with no network.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from tangshi_pipeline import __version__
from tangshi_pipeline.poet.params import GenerateParams
from tangshi_pipeline.studio.batching import Batcher, Busy
from tangshi_pipeline.studio.poet import API_FIELDS, MAX_POEMS, Poet, RequestError

log = logging.getLogger(__name__)
MAX_BODY = 16 * 1024  # bytes


# -------------------------------------------------------------------- response models (OpenAPI)


class Source(BaseModel):
    title: str
    author: str


class Rhyme(BaseModel):
    groups: list[str]   # the character's 平水韵 level-tone groups
    ok: bool            # in the poem's rhyme group, and not a rhyme character used before (重韵)


class Char(BaseModel):
    char: str
    traditional: str
    tone: str | None                   # 平 / 仄 / ○ (either) from the tone lexicon; null: unknown
    required: Literal["平", "仄", "*"] | None  # the template position (forms); * = either tone
    fits: bool | None                  # the character fits it; null: a free position or no template
    rhyme: Rhyme | None                # a rhyming line end


class Line(BaseModel):
    text: str
    traditional: str
    punctuation: str
    copied_from: list[Source]          # poems of the training split with this very line
    chars: list[Char]


class Verdict(BaseModel):
    form: str                          # the shape the poem has (free when none)
    format: bool
    template: str | None               # the checker's best template, e.g. 平起入韵
    tones: bool                        # every strict position fits the template
    tone_matches: int
    tone_positions: int
    rhyme: bool
    rhyme_group: str | None
    rhyme_repeated: bool
    failing: list[tuple[int, int]]     # (line, position) of every character that breaks tone or rhyme


class Poem(BaseModel):
    index: int                         # the poem's index in the request (its random draws' key, with the seed)
    rank: int                          # 1 = best score
    text: str
    traditional: str
    score: float                       # the model's mean log-probability per character (nats)
    held_to: str | None                # the template decoding kept it to (strict tones / rhyme)
    fallbacks: int                     # steps where the rules left no character (shape only then)
    lines: list[Line]
    verdict: Verdict


class Poems(BaseModel):
    model: str                         # the model version that wrote them
    settings: dict[str, Any]           # every generate parameter used: the permalink's query string
    poems: list[Poem]                  # best first
    seconds: float


class ModelVersion(BaseModel):
    version: str
    served: bool
    metrics: dict[str, Any]
    vocab_fingerprint: str | None
    architecture: dict[str, Any] | None
    error: str | None


class Models(BaseModel):
    served: str
    versions: list[ModelVersion]       # newest first


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    waiting_poems: int
    batches: int
    requests: int
    uptime_s: float


# ------------------------------------------------------------------------------------ errors


class BodyTooLarge(ValueError):
    pass


async def _read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise RequestError([{"loc": ["body"], "field": "body", "type": "json_invalid",
                             "msg": f"the body is not valid JSON ({exc})"}]) from None


def _request_schema(defaults: dict[str, Any]) -> dict[str, Any]:
    """GenerateParams' JSON schema, less the server's fields, with the project's values as defaults."""
    schema = GenerateParams.model_json_schema()
    props = {k: {**v, "default": defaults.get(k)} for k, v in schema["properties"].items() if k in API_FIELDS}
    props["num_samples"]["maximum"] = MAX_POEMS
    return {"title": "PoemRequest", "type": "object", "properties": props, "additionalProperties": False,
            "description": "Any generate parameter (conf/base/parameters_generate.yml); the others keep the "
                           f"project's values. At most {MAX_POEMS} poems (num_samples × begin characters)."}


# ----------------------------------------------------------------------------------- the app


def create_app(poet: Poet, models: list[dict[str, Any]], window: float = 0.005, max_body: int = MAX_BODY,
               max_batch: int = 256, pool: ThreadPoolExecutor | None = None) -> FastAPI:
    """The studio for a loaded :class:`Poet`; ``models``: the model versions (``kedro models``' rows);
    ``pool``: the :func:`.batching.decoder_thread` that loaded the poet (default: a new one)."""
    batcher = Batcher(poet.write_together, window=window, max_batch=max_batch, pool=pool)
    started = time.monotonic()
    static = files("tangshi_pipeline.studio") / "static"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tangshi-pipeline poem studio", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan, description="Poems from the trained poet: the same rules, decoder and "
                  "checker as `kedro run --pipelines=generate`.")
    app.state.batcher = batcher
    app.mount("/static", StaticFiles(packages=[("tangshi_pipeline.studio", "static")]), name="static")

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError):
        return JSONResponse({"detail": exc.problems}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse({"detail": [{"loc": ["body"], "field": "body", "type": "too_large", "msg": str(exc)}]},
                            status_code=413)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (the server's log has the details)"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (static / "index.html").read_text("utf-8")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        return (static / "docs.html").read_text("utf-8")

    @app.post("/api/poems", response_model=Poems, summary="Write poems",
              openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                  "schema": _request_schema(poet.defaults),
                  "example": {"form": "qijue", "acrostic": "春江花月", "tones": "strict", "rhyme": True,
                              "strategy": "sample", "num_samples": 8, "seed": 7}}}}},
              responses={413: {"description": "Body too large"}, 422: {"description": "A bad field, named"},
                         503: {"description": "Too many poems waiting; retry"}})
    async def write_poems(request: Request) -> JSONResponse:
        """Poems ranked by the model's mean log-probability per character, best first, each with
        per-character tones, its template, rhyme groups, the checker's verdict and copied lines."""
        start = time.perf_counter()
        req = poet.validate(await _read_json(request, max_body))
        poems = await batcher.submit(req.group, req, req.rows)
        # returned as built: ``Poems`` documents it (and the tests hold the answer to it); having
        # FastAPI re-validate and re-encode every character's annotation cost more CPU than decoding
        return JSONResponse({"model": poet.version, "settings": req.params.model_dump(include=set(API_FIELDS)),
                             "poems": poems, "seconds": round(time.perf_counter() - start, 4)})

    @app.get("/api/models", response_model=Models, summary="Model versions, newest first")
    def list_models() -> dict[str, Any]:
        rows = [{**{k: m.get(k) for k in ModelVersion.model_fields if k != "served"},
                 "served": m["version"] == poet.version} for m in models]
        return {"served": poet.version, "versions": rows}

    @app.get("/api/health", response_model=Health, summary="Liveness and load")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": poet.version, "waiting_poems": batcher.waiting,
                "batches": batcher.batches, "requests": batcher.requests,
                "uptime_s": round(time.monotonic() - started, 1)}

    return app
