"""Prometheus metrics of one service: HTTP requests per endpoint, generation stages, decisions per lane.

Each service owns its registry (not the process-global one), so two apps in one process, as in
the tests, count separately. Endpoints are labelled by their route template ("/search"), never by
the raw path, so a scan of random URLs cannot grow the label set; anything unmatched is "unmatched".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dualpath.pipeline.generator import GenerationStep

# Seconds. HTTP: a cached search (~1 ms) up to a long generation; stages: ~50 µs decisions up to a slow encode.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dualpath_http_requests", "HTTP requests answered.", ["endpoint", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "dualpath_http_request_duration_seconds",
            "Time from request to the last byte of the response (whole stream for SSE).",
            ["endpoint"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("dualpath_http_requests_in_flight", "HTTP requests being answered.", registry=r)
        self.stage_seconds = Histogram(
            "dualpath_generation_stage_duration_seconds",
            "Time of each stage of one generation step (encode, lvm, query, search, decide, render, total).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "dualpath_decisions", "Generation steps by lane and decision.", ["lane", "decision"], registry=r
        )
        self.fallbacks = Counter(
            "dualpath_retrieval_fallbacks",
            "Steps whose retrieval failed (empty, timeout, error) and fell back to NOVEL.",
            ["lane", "kind"],
            registry=r,
        )
        self.generations = Counter("dualpath_generations", "Generations started, by lane.", ["lane"], registry=r)
        self.generate_batch = Histogram(
            "dualpath_generate_batch_size",
            "Requests per micro-batched POST /generate call (service.max_batch, service.batch_wait_ms).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def observe_step(self, step: GenerationStep) -> None:
        record = step.record
        self.decisions.labels(record.lane, record.decision.value).inc()
        if record.fallback_reason:
            self.fallbacks.labels(record.lane, record.fallback_reason.split(":", 1)[0]).inc()
        for stage, ms in step.latency_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def endpoint_label(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The route template a request was (or, if a guard answered first, would have been) routed to."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"


class HTTPMetricsMiddleware:
    """Counts every HTTP request and times it to the last body chunk, so a stream is timed whole."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.in_flight.dec()
            endpoint = endpoint_label(scope, self.routes)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - start)
