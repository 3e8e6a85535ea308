"""What stands in front of the routes: the bind rule, the API key, the request body's size and time limits, and
the one-line JSON 500 of a request that failed on a bug.

Both checks are plain ASGI middleware, so they cover every route alike (mounted static files and
the docs included) and never buffer a streaming response.

The key is accepted as `X-API-Key: KEY`, `Authorization: Bearer KEY`, or as the password of
HTTP Basic auth (any user name): a browser cannot add a header to a page it navigates to, but it
asks for Basic credentials on a 401 and then sends them with the dashboard's own requests.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Iterable

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dualpath.errors import DualPathError

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def is_loopback(host: str) -> bool:
    """True for `localhost` and any loopback address (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond this machine without an API key."""
    if not is_loopback(host) and not (api_key and api_key.strip()):
        raise DualPathError(
            f"refusing to bind to {host} without an API key: pass --api-key (or set DUALPATH_API_KEY), "
            "or bind to 127.0.0.1"
        )


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries, from whichever of the three accepted headers it used."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1")
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    return None
                return decoded.partition(":")[2]
    return None


async def send_json(send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """401 for any request without the right key, except the health checks."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope["headers"])
        if key is not None and hmac.compare_digest(key.encode(), self.key):
            await self.app(scope, receive, send)
            return
        # A page a browser navigates to gets the Basic challenge (the browser asks for the key);
        # API clients get the Bearer one.
        wants_html = any(n == b"accept" and b"text/html" in v for n, v in scope["headers"])
        challenge = b'Basic realm="dualpath"' if wants_html else b"Bearer"
        detail = "missing API key" if key is None else "wrong API key"
        await send_json(
            send, 401, f"{detail}: send it as X-API-Key or Authorization: Bearer", [(b"www-authenticate", challenge)]
        )


class TrackedSend:
    """`send`, noting whether the response has started (after that, an error can no longer be answered)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class BodyTooLarge(HTTPException):
    """Raised while the body is read; an HTTPException, so FastAPI's body parsing passes it on as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised while the body is read, when it has not all arrived in time: answered 408, connection closed."""

    def __init__(self, timeout_s: float) -> None:
        # The rest of the body may still come, so the connection cannot carry another request: close it.
        super().__init__(408, f"request body not received within {timeout_s:g} s", headers={"Connection": "close"})


class BodyLimitMiddleware:
    """413 for a request body over `limit` bytes, by its Content-Length or, when chunked, as it arrives; 408
    for a body that has not all arrived `timeout_s` after the request started (a stalled or trickling client
    would otherwise hold its connection, and a worker's wait, for ever)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = BodyTooLarge(self.limit)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await send_json(send, 413, too_large.detail)
                return
        received = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: waiting for it is not timed
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large
                body_done = not message.get("more_body", False)
            return message

        tracked = TrackedSend(send)
        try:
            await self.app(scope, counting_receive, tracked)
        except BodyTooLarge:
            if tracked.started:
                raise
            await send_json(send, 413, too_large.detail)
        except BodyTimeout as err:
            if tracked.started:
                raise
            await send_json(send, 408, err.detail, [(b"connection", b"close")])


class InternalErrorMiddleware:
    """Any exception a route lets through (a bug, never bad input) becomes a one-line JSON 500 for that request
    alone, logged with its traceback, and the connection stays usable; after a response has started the
    exception goes on (a stream reports its own errors as events)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if tracked.started:
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await send_json(send, 500, "internal error; see the server log")
