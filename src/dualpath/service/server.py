"""How uvicorn serves the app: the idle timeout of a connection, before its first request and between requests.

uvicorn closes a keep-alive connection that stays idle `timeout_keep_alive` seconds after a response, but
it gives a connection that never completes a request's headers no deadline at all: a client that
connects and sends nothing, or trickles its headers, holds the connection for ever. `GuardedH11Protocol`
closes a connection that has not completed a request's headers `service.idle_timeout_s` after it opened
or after its last response. A request's body has its own deadline (`service.body_timeout_s`, enforced by
`guards.BodyLimitMiddleware`); the time a generation takes to compute is not limited here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from dualpath.config import ServiceConfig


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the headers of each request (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are complete: its body and answer have their own limits
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # first: a pipelined request that starts inside the call below disarms it again
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_expired)

    def _disarm(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self.transport.close()


def server_options(settings: ServiceConfig) -> dict[str, Any]:
    """The uvicorn settings of `dualpath serve` (and of the tests' live server): its protocol and timeouts."""
    return {"http": GuardedH11Protocol, "timeout_keep_alive": settings.idle_timeout_s}
