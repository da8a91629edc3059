"""Run the app under uvicorn."""

from __future__ import annotations

import socket

from ..api import Generator
from ..errors import TokentreeError
from .config import ServeConfig

SHUTDOWN_MARGIN = 0.5  # seconds of the grace period kept for the last events of ended requests


def build_server(generator: Generator, config: ServeConfig):
    """A uvicorn Server for the app (call ``.run(sockets=...)`` or ``.run()``)."""
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        """On shutdown the worker answers its queued jobs 503 at once and ends the running one
        before the grace period does, so every client gets a JSON error or a stream's error event
        and [DONE], never a cancelled task's plain-text 500."""

        async def shutdown(self, sockets=None) -> None:
            worker.begin_shutdown(max(0.0, config.shutdown_grace - SHUTDOWN_MARGIN))
            await super().shutdown(sockets)

    app = create_app(generator, config)
    worker = app.state.worker
    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=config.shutdown_grace,
        )
    )


def serve(generator: Generator, config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM finish or abort in-flight requests, then exit)."""
    try:
        with socket.create_server((config.host, config.port)):
            pass
    except OSError as exc:
        raise TokentreeError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    build_server(generator, config).run()
