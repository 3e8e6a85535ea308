"""uvicorn serving a real app on a free loopback port in a thread (the dashboard and batching tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from dualpath.service import DualPathService, create_app
from dualpath.service.server import server_options


@contextmanager
def serving(service: DualPathService) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread; yields the base URL, stops the server after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    options = server_options(service.cfg.service)  # the protocol and timeouts `dualpath serve` runs with
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
