"""Run the app under uvicorn."""

from __future__ import annotations

import logging
import signal
import socket
from urllib.parse import parse_qsl, urlencode

from ..api import Generator
from ..errors import TokentreeError
from .config import ServeConfig

SHUTDOWN_MARGIN = 0.5  # seconds of the grace period kept for the last events of ended requests
SECRET_QUERY_KEYS = frozenset({"api_key", "api-key", "key", "token", "access_token"})


def build_server(generator: Generator, config: ServeConfig, state_path: str | None = None):
    """A uvicorn Server for the app (call ``.run(sockets=...)`` or ``.run()``); ``state_path``:
    where the drafter's learned state is kept (see :mod:`tokentree.server.state_keeper`)."""
    import uvicorn

    from .app import create_app

    class Server(uvicorn.Server):
        """On shutdown the worker answers its queued jobs 503 at once and ends the running one
        before the grace period does, so every client gets a JSON error or a stream's error event
        and [DONE], never a cancelled task's plain-text 500."""

        async def shutdown(self, sockets=None) -> None:
            worker.begin_shutdown(max(0.0, config.shutdown_grace - SHUTDOWN_MARGIN))
            await super().shutdown(sockets)

    app = create_app(generator, config, state_path)
    worker = app.state.worker
    logging.getLogger("uvicorn.access").addFilter(redact_query_secrets)
    return Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            timeout_graceful_shutdown=config.shutdown_grace,
            timeout_keep_alive=config.read_timeout,
            limit_concurrency=config.max_connections,
            http=header_timeout_protocol(),
        )
    )


def header_timeout_protocol():
    """uvicorn's h11 protocol, also closing a connection whose next request headers have not all
    arrived ``timeout_keep_alive`` seconds after it opened or after its last response (uvicorn's
    own keep-alive timer stops at the first byte, so a client trickling headers would hold the
    connection forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not None and self.cycle is not cycle:  # a request's headers are in
                self._cancel_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self.header_timer = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def _cancel_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

    return HeaderTimeoutProtocol


def redact_query_secrets(record: logging.LogRecord) -> bool:
    """An access-log filter: values of secret-looking query parameters (a key sent as
    ``?api_key=``) never reach the log."""
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
        path, _, query = args[2].partition("?")
        pairs = [
            (k, "REDACTED" if k.lower() in SECRET_QUERY_KEYS else v)
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        record.args = (*args[:2], f"{path}?{urlencode(pairs)}", *args[3:])
    return True


def exit_cleanly(signum: int, frame) -> None:
    """What SIGINT and SIGTERM do once uvicorn has shut down gracefully (it raises the signal
    again after): exit with status 0, the state already saved."""
    raise SystemExit(0)


def serve(generator: Generator, config: ServeConfig, state_path: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM: in-flight requests finish or are answered within the grace
    period, the drafter state is saved, and the process exits with status 0."""
    try:
        with socket.create_server((config.host, config.port)):
            pass
    except OSError as exc:
        raise TokentreeError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_cleanly)
    # the verify profile every planned request needs, measured (once per machine) before the
    # server listens, so no request pays for it and /health answers only when it is ready
    generator.cost_profile()
    generator.grammar.warm()  # so no constrained request pays for the grammar engine's start
    build_server(generator, config, state_path).run()
