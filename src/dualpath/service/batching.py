"""Micro-batching of POST /generate: requests that arrive together are computed as one batch.

The first request that finds no open batch opens one and leads it: it waits for a generation
worker (the same capacity limiter the streamed generations use), then up to `wait_s` after its own
arrival, or until the batch holds `max_batch` requests, then closes the batch and computes it in a
worker thread (`DualPathService.generate_many`: one `Generator.generate_batch` per step count).
Requests that arrive while a batch is open join it and wait for its answers.

So under load batches form with no added wait: while every worker is busy, new requests pile into
the open batch, and the next free worker takes them all. A lone request pays at most `wait_s`.
Each request gets its own answer, or its own error; a batch that fails as a whole (a bug, not bad
input) fails every request in it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from dualpath.service.schemas import GenerateRequest

Compute = Callable[[list[GenerateRequest]], Awaitable[Sequence[Any]]]


class BatchFailed(RuntimeError):
    """The batch a request joined did not complete (its leader was cancelled, or computing it raised)."""


class _Batch:
    def __init__(self, first_arrival: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.first_arrival = first_arrival
        self.requests: list[GenerateRequest] = []
        self.closed = False
        self.full = anyio.Event()
        self.done = anyio.Event()
        self.results: Sequence[Any] | None = None
        self.error: BaseException | None = None


class GenerateBatcher:
    """Collects requests into batches of at most `max_batch`, each waiting at most `wait_s` for company.

    `limiter` gives the capacity limiter a batch holds while it waits for company and computes;
    `compute` runs a batch (in a worker thread) and returns one answer or one exception per request.
    """

    def __init__(
        self, max_batch: int, wait_s: float, limiter: Callable[[], anyio.CapacityLimiter], compute: Compute
    ) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be ≥ 1 and wait_s ≥ 0, got {max_batch} and {wait_s}")
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._limiter = limiter
        self._compute = compute
        self._open: _Batch | None = None

    async def submit(self, request: GenerateRequest) -> Any:
        """This request's answer, computed in a batch with whatever arrives with it; raises its error."""
        batch = self._open
        # A batch belongs to the event loop that opened it (a test client may run one loop per call).
        leader = batch is None or batch.closed or batch.loop is not asyncio.get_running_loop()
        if leader:
            batch = self._open = _Batch(time.monotonic())
        assert batch is not None
        index = len(batch.requests)
        batch.requests.append(request)
        if len(batch.requests) >= self.max_batch:
            self._close(batch)
        if leader:
            await self._lead(batch)
        else:
            await batch.done.wait()
        if batch.error is not None:
            raise BatchFailed(f"the generation batch failed: {batch.error!r}") from batch.error
        assert batch.results is not None
        result = batch.results[index]
        if isinstance(result, Exception):
            raise result
        return result

    def _close(self, batch: _Batch) -> None:
        batch.closed = True
        batch.full.set()
        if self._open is batch:
            self._open = None

    async def _lead(self, batch: _Batch) -> None:
        limiter = self._limiter()
        token = object()
        try:
            await limiter.acquire_on_behalf_of(token)
            try:
                remaining = batch.first_arrival + self.wait_s - time.monotonic()
                if remaining > 0 and not batch.closed:
                    with anyio.move_on_after(remaining):
                        await batch.full.wait()
                self._close(batch)
                batch.results = await self._compute(list(batch.requests))
            finally:
                limiter.release_on_behalf_of(token)
        except BaseException as err:  # cancelled or failed: the batch's other requests must not wait forever
            self._close(batch)
            batch.error = err
            raise
        finally:
            batch.done.set()
