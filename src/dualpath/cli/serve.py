"""`dualpath serve`: the HTTP API and the live dashboard (FastAPI + uvicorn)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from dualpath.cli.common import (
    BANK_OPTION,
    CONFIG_OPTION,
    DEVICE_OPTION,
    MILVUS_URI_OPTION,
    TELEMETRY_OPTION,
    load_config,
    make_console,
    open_telemetry,
)

console = make_console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    bank: Path = BANK_OPTION,
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1, this machine only)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8000)."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="DUALPATH_API_KEY", help="Key every route but /healthz and /readyz requires; "
        "needed to bind beyond localhost. Prefer the DUALPATH_API_KEY variable (a flag shows in `ps`).",
    ),
    lanes_file: Path | None = typer.Option(None, "--lanes", help="Your lanes YAML, merged over the shipped lanes."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
    milvus_uri: str | None = MILVUS_URI_OPTION,
    config: Path | None = CONFIG_OPTION,
    telemetry: Path | None = TELEMETRY_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Serve search, generation (whole or streamed), telemetry, metrics and the dashboard at /."""
    import uvicorn

    from dualpath.runtime import torch_threads
    from dualpath.service import DualPathService, check_bind, create_app
    from dualpath.service.server import server_options

    cfg = load_config(
        config,
        device=device,
        service={"host": host, "port": port, "api_key": api_key},
        decider={"lanes_file": lanes_file},
        bank={"milvus_uri": milvus_uri},
    )
    settings = cfg.service
    check_bind(settings.host, settings.api_key)  # before the slow load: a refused bind fails at once
    _route_uvicorn_logs()
    # Requests run in parallel worker threads; more intra-op threads per request only oversubscribe the cores.
    with torch_threads(settings.threads_per_request):
        sink = open_telemetry(telemetry)  # before the slow load: a path that cannot be written fails at once
        service = DualPathService.load(bank, cfg)
        if sink is not None:
            service.generator.telemetry = sink
        try:
            shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
            url = f"http://{shown_host}:{settings.port}"
            key_note = "API key required" if settings.api_key else "no API key (localhost only)"
            console.print(f"dashboard {url}/  ·  API docs {url}/docs  ·  {key_note}  ·  Ctrl-C stops", highlight=False)
            uvicorn.run(
                create_app(service),
                host=settings.host,
                port=settings.port,
                log_config=None,  # our handlers (below), not uvicorn's own format
                access_log=access_log,
                timeout_graceful_shutdown=5,
                **server_options(settings),  # the idle timeout of a connection (body_timeout_s is the app's)
            )
        finally:
            service.close()


def _route_uvicorn_logs() -> None:
    """Send uvicorn's log lines through the handlers and level `configure_logging` gave dualpath."""
    ours = logging.getLogger("dualpath")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = list(ours.handlers)
        logger.setLevel(ours.level)
        logger.propagate = False
