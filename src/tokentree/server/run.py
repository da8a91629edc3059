"""Run the app under uvicorn."""

from __future__ import annotations

import socket

from ..api import Generator
from ..errors import TokentreeError
from .config import ServeConfig


def build_server(generator: Generator, config: ServeConfig):
    """A uvicorn Server for the app (call ``.run(sockets=...)`` or ``.run()``)."""
    import uvicorn

    from .app import create_app

    app = create_app(generator, config)
    return uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                         timeout_graceful_shutdown=config.shutdown_grace))


def serve(generator: Generator, config: ServeConfig) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM finish or abort in-flight requests, then exit)."""
    try:
        with socket.create_server((config.host, config.port)):
            pass
    except OSError as exc:
        raise TokentreeError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    build_server(generator, config).run()
