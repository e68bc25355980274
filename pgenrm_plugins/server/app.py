"""The FastAPI app of the scoring service, and `serve()` to run it under uvicorn.

Endpoints:
  POST /v1/score     one ScoreRequest JSON object or a list -> one ScoreResult or a list
  POST /get_reward   OpenRLHF's remote reward protocol (see `frameworks/openrlhf.py`)
  GET  /healthz      liveness and queue state (never needs the token)
  GET  /metrics      Prometheus text

Safety: binds 127.0.0.1 by default; a bearer token from `$PGENRM_API_KEY` (or settings.api_key)
guards every endpoint except /healthz; bodies over `max_body_bytes` get 413; more than
`max_requests_per_call` requests or `max_completions_per_request` completions get 422 naming the
field; bad JSON gets 400; a scorer failure gets 503 for the requests of that batch only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pgenrm_plugins.frameworks import openrlhf
from pgenrm_plugins.requests_io import describe_validation_error
from pgenrm_plugins.scoring.batching import (
    Batcher,
    BatcherClosed,
    ResultCache,
    ScorerFailed,
)
from pgenrm_plugins.scoring.contract import RequestScorer
from pgenrm_plugins.server.metrics import Metrics
from pgenrm_plugins.types import ScoreRequest

log = logging.getLogger(__name__)
API_KEY_ENV = "PGENRM_API_KEY"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8017, ge=0, le=65535)
    api_key: str | None = Field(None, description=f"bearer token; default: ${API_KEY_ENV} if set")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_requests_per_call: int = Field(256, ge=1)
    max_completions_per_request: int = Field(64, ge=1)
    max_wait_ms: float = Field(20.0, ge=0.0)
    max_batch_requests: int = Field(64, ge=1)
    end_of_turn_tokens: tuple[str, ...] = openrlhf.END_OF_TURN
    graceful_shutdown_s: float = Field(120.0, ge=0.0, description="uvicorn waits this long for in-flight requests")
    # identical requests share one computation; recent answers are kept (docs/service.md)
    dedupe: bool = Field(True, description="a request identical to one in flight or recently answered is not rescored")
    cache_entries: int = Field(10_000, ge=0, description="answers kept for retries (0: none)")
    cache_bytes: int = Field(64 * 1024 * 1024, ge=0, description="... and at most this many bytes of them")
    cache_ttl_s: float = Field(900.0, ge=0.0, description="how long an answer is kept")
    deadline_s: float = Field(150.0, gt=0.0, description="a request not answered by then gets 504 (its computation "
                                                         "goes on into the cache); below OpenRLHF's 180 s timeout")


class HTTPProblem(Exception):
    def __init__(self, status: int, detail: str, kind: str):
        self.status, self.detail, self.kind = status, detail, kind


def _check_auth(request: Request, key: str | None) -> None:
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise HTTPProblem(401, "missing bearer token: send 'Authorization: Bearer <key>' "
                               f"(the server's ${API_KEY_ENV})", "auth")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise HTTPProblem(401, "wrong bearer token", "auth")


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body of {declared} bytes is over the limit of {limit} bytes", "too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body is over the limit of {limit} bytes", "too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise HTTPProblem(400, "empty body: send JSON", "invalid")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise HTTPProblem(400, f"body is not valid JSON ({msg}{where})", "invalid") from None


def _parse_score_body(body: Any, s: ServerSettings) -> tuple[list[ScoreRequest], bool]:
    single = isinstance(body, dict)
    rows = [body] if single else body
    if not isinstance(rows, list):
        raise HTTPProblem(422, "body must be a ScoreRequest object or a list of them", "invalid")
    if not rows:
        raise HTTPProblem(422, "body is an empty list: send at least one request", "invalid")
    if len(rows) > s.max_requests_per_call:
        raise HTTPProblem(422, f"field 'requests': at most {s.max_requests_per_call} requests per call, "
                               f"got {len(rows)}", "invalid")
    reqs = []
    for i, row in enumerate(rows):
        where = "" if single else f"{i}."
        if isinstance(row, dict) and isinstance(row.get("completions"), list) \
                and len(row["completions"]) > s.max_completions_per_request:
            raise HTTPProblem(422, f"field '{where}completions': at most {s.max_completions_per_request} "
                                   f"completions per request, got {len(row['completions'])}", "invalid")
        try:
            reqs.append(ScoreRequest.model_validate(row))
        except ValidationError as exc:
            detail = describe_validation_error(exc)
            raise HTTPProblem(422, detail.replace("field '", f"field '{where}") if where else detail,
                              "invalid") from None
    return reqs, single


def _check_mode(scorer: RequestScorer, reqs: list[ScoreRequest]) -> None:
    """Refuse what would fail the scorer here, so one bad request never fails its batch-mates."""
    from pgenrm_plugins.scoring import check_references

    try:
        check_references(reqs, scorer.config.reward.mode)
    except ValueError as exc:
        raise HTTPProblem(422, str(exc), "invalid") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ScoringService:
    """What the endpoints share: the scorer, its batcher and answer cache, the metrics and the
    settings. One per app (`app.state.service`)."""

    def __init__(self, scorer: RequestScorer, settings: ServerSettings):
        self.scorer, self.settings = scorer, settings
        self.api_key = settings.api_key if settings.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
        self.metrics = Metrics()
        self.cache = (ResultCache(settings.cache_entries, settings.cache_bytes, settings.cache_ttl_s)
                      if settings.dedupe else None)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.batcher = Batcher(self._score_and_sign, max_wait_ms=settings.max_wait_ms,
                               max_batch_requests=settings.max_batch_requests, metrics=self.metrics,
                               identity=scorer.identity if settings.dedupe else None, cache=self.cache,
                               deadline_s=settings.deadline_s)

    def _score_and_sign(self, reqs: list[ScoreRequest]):
        """The scorer's results, each saying which replica and which store version scored it."""
        store = self.scorer.store
        served_by = {"replica": self.replica, "store_version": store.version() if store is not None else None}
        results = self.scorer.score(reqs)
        for result in results:
            result.components.served_by = served_by
        return results

    async def _score(self, reqs: list[ScoreRequest]):
        try:
            return await self.batcher.submit(reqs)
        except ScorerFailed as exc:
            raise HTTPProblem(503, str(exc), "scorer") from None
        except BatcherClosed as exc:
            raise HTTPProblem(503, str(exc), "unavailable") from None

    async def answer(self, request: Request, reqs: list[ScoreRequest], reply) -> JSONResponse:
        """Score, unless the caller goes away first: then its answer is counted as 499 (client
        closed request), not as a 200 it never read. Its computation still finishes into the
        cache, for the retry that a timed-out caller sends (the batcher keeps it running)."""
        deadline = self.settings.deadline_s
        scoring = asyncio.ensure_future(self._score(reqs))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({scoring, gone}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if scoring in done:
            return JSONResponse(reply(scoring.result()))
        scoring.cancel()
        if gone in done:
            return JSONResponse({"detail": "the caller went away before the answer"}, status_code=499)
        self.metrics.failures.labels("deadline").inc()
        return JSONResponse({"detail": f"not answered within deadline_s={deadline:g}; the computation goes on, "
                                       "and the same request sent again gets its answer"}, status_code=504)


routes = APIRouter()


def _service(request: Request) -> ScoringService:
    return request.app.state.service


@routes.post("/v1/score")
async def score(request: Request):
    service = _service(request)
    _check_auth(request, service.api_key)
    reqs, single = _parse_score_body(await _read_json(request, service.settings.max_body_bytes), service.settings)
    _check_mode(service.scorer, reqs)

    def reply(results):
        data = [r.model_dump(mode="json") for r in results]
        return data[0] if single else data

    return await service.answer(request, reqs, reply)


@routes.post("/get_reward")
async def get_reward(request: Request):
    service = _service(request)
    _check_auth(request, service.api_key)
    s = service.settings
    body = await _read_json(request, s.max_body_bytes)
    try:
        reqs = openrlhf.to_requests(body, s.end_of_turn_tokens)
    except openrlhf.ProtocolError as exc:
        raise HTTPProblem(422, str(exc), "invalid") from None
    if len(reqs) > s.max_requests_per_call:
        raise HTTPProblem(422, f"field 'query': at most {s.max_requests_per_call} samples per call, "
                               f"got {len(reqs)}", "invalid")
    _check_mode(service.scorer, reqs)
    return await service.answer(request, reqs, openrlhf.to_reply)


@routes.get("/healthz")
async def healthz(request: Request):
    batcher = _service(request).batcher
    ok = batcher.running
    # pid: which process answered (one of several uvicorn workers or Ray Serve replicas)
    return JSONResponse({"status": "ok" if ok else "stopping", "queue_depth": batcher.depth,
                         "batches": batcher.batches, "pid": os.getpid()}, status_code=200 if ok else 503)


@routes.get("/metrics")
async def prometheus(request: Request):
    service = _service(request)
    _check_auth(request, service.api_key)
    service.metrics.queue_depth.set(service.batcher.depth)
    service.metrics.cache_entries.set(len(service.cache) if service.cache is not None else 0)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


_PATHS = {route.path for route in routes.routes}


def create_app(scorer: RequestScorer, settings: ServerSettings | dict | None = None) -> FastAPI:
    """The service over `scorer` (a `Scorer`, or any `RequestScorer`)."""
    s = settings if isinstance(settings, ServerSettings) else ServerSettings.model_validate(settings or {})
    service = ScoringService(scorer, s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        log.info("pgenrm scoring service ready (auth %s)", "on" if service.api_key else "off")
        try:
            yield
        finally:
            await service.batcher.stop()  # uvicorn has let in-flight requests finish; drain what is queued

    app = FastAPI(title="P-GenRM scoring service", lifespan=lifespan)
    app.state.service = service
    app.include_router(routes)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        service.metrics.failures.labels(exc.kind).inc()
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            endpoint = request.url.path if request.url.path in _PATHS else "other"
            service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            service.metrics.requests.labels(endpoint, str(status)).inc()

    return app


def serve(config_path: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8017,
          settings: ServerSettings | dict | None = None, log_level: str = "info") -> None:
    """Load the scorer from `config_path` (None: $PGENRM_CONFIG, else the embedded judge) and serve it."""
    import uvicorn

    from pgenrm_plugins.scoring import load_scorer

    s = settings if isinstance(settings, ServerSettings) else ServerSettings.model_validate(settings or {})
    s = s.model_copy(update={"host": host, "port": port})
    if host not in ("127.0.0.1", "localhost", "::1") and not (s.api_key or os.environ.get(API_KEY_ENV)):
        log.warning("serving on %s without a bearer token: set $%s to require one", host, API_KEY_ENV)
    scorer = load_scorer(str(config_path) if config_path else None, local=True)  # a `scorer:` section is for clients
    try:
        uvicorn.run(create_app(scorer, s), host=s.host, port=s.port, log_level=log_level,
                    timeout_graceful_shutdown=s.graceful_shutdown_s)
    finally:
        scorer.close()
