"""The HTTP API and the dashboard: a FastAPI app around one loaded DualPathService.

Routes (all but the health checks need the API key when one is set):
    GET  /healthz            the process is up
    GET  /readyz             the bank and models are loaded (503 while shutting down)
    GET  /info               bank, models, lanes with thresholds, limits
    POST /search             nearest concepts to a text or a vector
    POST /generate           a whole generation as JSON (requests that arrive together run as one batch)
    POST /generate/stream    the same as server-sent events: start, one step event per step, done
    GET  /telemetry          recent decision records, per-lane summary, c_max histograms
    GET  /metrics            Prometheus text
    GET  /                   the live dashboard (static/), GET /docs the OpenAPI docs (served offline)

Generation and search are CPU-bound (torch, FAISS): they run in worker threads behind their own
capacity limiters, so the event loop keeps answering health checks, telemetry and the stream
while they compute, and a burst of generations cannot take every worker thread. Whole generations
that arrive together are micro-batched (service/batching.py); streamed ones run one by one.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from dualpath import __version__
from dualpath.errors import DualPathError
from dualpath.service.batching import GenerateBatcher
from dualpath.service.core import DualPathService, lane_info
from dualpath.service.guards import APIKeyMiddleware, BodyLimitMiddleware, InternalErrorMiddleware
from dualpath.service.metrics import CONTENT_TYPE, HTTPMetricsMiddleware
from dualpath.service.schemas import GenerateRequest, SearchRequest

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
T = TypeVar("T")


def validation_detail(err: RequestValidationError) -> tuple[int, str]:
    """One line for a request that did not parse or validate: 400 for malformed JSON, 422 otherwise."""
    errors = err.errors()
    first = errors[0]
    if first["type"] == "json_invalid":
        position = first["loc"][-1]
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return 400, f"malformed JSON at character {position}: {reason}"
    # A field name is the client's text: shown as a literal so a newline in it cannot break the one line.
    where = ".".join(_printable(str(p)) for p in first["loc"] if p != "body") or "body"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing" and where == "body":
        message = "a JSON body is required"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {message}{more}"


def _printable(name: str) -> str:
    return name if name.isprintable() else ascii(name)


def sse_event(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


def _next_or_none(iterator: Iterator[T]) -> T | None:
    return next(iterator, None)


def create_app(service: DualPathService) -> FastAPI:
    """The app for a loaded service. The caller owns the service and closes it after serving."""
    cfg = service.cfg.service
    workers = {"generate": cfg.generation_workers, "search": cfg.search_workers}
    limiters: dict[str, anyio.CapacityLimiter] = {}
    state = {"shutting_down": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What is loaded by now (the models, the bank, the encoder, the libraries: ~500k objects on the demo
        # bank) lives as long as the server. Frozen out of the collector's reach, a full collection no longer
        # walks it: it took ~0.25 s, landing on whichever generation step was running.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            state["shutting_down"] = True
            gc.unfreeze()  # an app started again in the same process (tests, an embedding server) freezes anew

    def limited(fn: Callable[..., T], *args: Any) -> T:
        service.limit_threads()  # cheap, and worker threads come and go
        return fn(*args)

    def limiter(kind: str) -> anyio.CapacityLimiter:
        # Limiters belong to the running event loop, so they are made on first use, not with the app.
        if kind not in limiters:
            limiters[kind] = anyio.CapacityLimiter(workers[kind])
        return limiters[kind]

    async def in_worker(kind: str, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(limited, fn, *args, limiter=limiter(kind))

    async def generate_batch(requests: list[GenerateRequest]) -> list[dict[str, Any] | Exception]:
        # The batch already holds a generation worker's token (GenerateBatcher), so no limiter here.
        return await anyio.to_thread.run_sync(limited, service.generate_many, requests)

    batcher = (
        GenerateBatcher(cfg.max_batch, cfg.batch_wait_ms / 1000.0, lambda: limiter("generate"), generate_batch)
        if cfg.max_batch > 1 else None
    )

    app = FastAPI(
        title="dualpath",
        version=__version__,
        description="Dual-path next-vector generation: search a concept bank, generate, watch the decisions.",
        lifespan=lifespan,
        docs_url=None,  # served below from local assets, never from a CDN
        redoc_url=None,  # ReDoc ships no offline bundle in any installed package
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        status, detail = validation_detail(err)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(DualPathError)
    async def _bad_input(request: Request, err: DualPathError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    # -- health -------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """The bank and models are loaded and the service takes requests."""
        if state["shutting_down"] or not service.ready:
            return JSONResponse({"detail": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ready"})

    # -- API ----------------------------------------------------------------------------------------

    @app.get("/info", tags=["api"])
    def info() -> JSONResponse:
        """The bank, the models, every lane with its thresholds, and the request limits."""
        return JSONResponse(service.info())

    @app.post("/search", tags=["api"])
    async def search(body: SearchRequest) -> JSONResponse:
        """Nearest bank concepts to a text or a vector (cosine), optionally within one domain."""
        return JSONResponse(await in_worker("search", service.search, body))

    @app.post("/generate", tags=["api"])
    async def generate(body: GenerateRequest) -> JSONResponse:
        """Continue a prompt for `steps` concepts; every step says what it decided and why, and `prompt` what
        the bank holds of the prompt (each sentence's nearest bank concept, and whether it counts as said).

        Requests that arrive together are computed as one batch (`service.max_batch`,
        `service.batch_wait_ms`); each gets the answer it would get alone.
        """
        if batcher is None:
            return JSONResponse(await in_worker("generate", service.generate, body))
        return JSONResponse(await batcher.submit(body))

    @app.post("/generate/stream", tags=["api"])
    async def generate_stream(body: GenerateRequest) -> StreamingResponse:
        """Server-sent events: `start` (the lane, the prompt's matches in the bank), one `step` per step as it
        is decided, then `done`.

        The request is checked and its first step computed before the response starts, so bad
        input gets a 4xx answer; an error after that arrives as an `error` event.
        """
        lane, prompt, steps = service.start_generation(body)
        first = await in_worker("generate", _next_or_none, steps)

        async def events() -> AsyncIterator[str]:
            step, count, texts = first, 0, []
            try:
                yield sse_event("start", {"lane": lane_info(lane), "prompt": prompt})
                while step is not None:
                    count += 1
                    if step["text"]:
                        texts.append(step["text"])
                    yield sse_event("step", step)
                    step = await in_worker("generate", _next_or_none, steps)
                yield sse_event("done", {"steps": count, "text": " ".join(texts)})
            except DualPathError as err:
                yield sse_event("error", {"detail": str(err)})
            except Exception:
                log.exception("generation stream failed")
                yield sse_event("error", {"detail": "internal error; see the server log"})
            finally:
                steps.close()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.get("/telemetry", tags=["api"])
    def telemetry(
        limit: int = Query(100, ge=0, le=cfg.telemetry_records, description="Recent records to return."),
    ) -> JSONResponse:
        """The last `limit` decision records, the summary per lane, and c_max histograms per lane."""
        return JSONResponse(service.telemetry(limit))

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        """Prometheus metrics: requests and latency per endpoint, stage latencies, decisions per lane."""
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    # -- pages --------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_docs(app)

    # Outermost last: metrics see every answer (401s, 408s, 413s and 500s too), the key is checked before a
    # body is read, and a bug in one request is a JSON 500 for that request alone.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    if cfg.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=cfg.api_key)
    app.add_middleware(HTTPMetricsMiddleware, metrics=service.metrics, routes=app.routes)
    return app


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the `swagger-ui-bundle-v2` package's files, so the docs work offline."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None

    if swagger_ui_path is None:

        @app.get("/docs", include_in_schema=False)
        def docs_missing() -> HTMLResponse:
            return HTMLResponse(
                "<p>Swagger UI is not installed (pip install 'dualpath[service]'). "
                'The OpenAPI schema is at <a href="/openapi.json">/openapi.json</a>.</p>'
            )

        return

    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="dualpath API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )
