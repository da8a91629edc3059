"""The FastAPI application: the route table over a :class:`~tokentree.server.service.Service`,
the error handlers and the gate (auth, body size, metrics per route)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from ..api import Generator
from .config import ServeConfig
from .errors import install_error_handlers
from .gate import Gate
from .service import Service

# (methods, path, the Service method answering it, extra route options)
ROUTES = (
    (["GET", "HEAD"], "/health", "health", {}),
    (["GET"], "/metrics", "metrics_text", {"response_class": PlainTextResponse}),
    (["GET"], "/v1/models", "models", {}),
    (["GET"], "/v1/models/{model:path}", "model", {}),
    (["POST"], "/v1/chat/completions", "chat_completions", {}),
    (["POST"], "/v1/completions", "completions", {}),
    (["POST"], "/v1/rollouts", "rollouts", {}),  # tokentree's extension
)


def create_app(generator: Generator, config: ServeConfig, state_path: str | None = None) -> FastAPI:
    """The OpenAI-compatible app over ``generator`` (see :class:`Service` for ``state_path``)."""
    service = Service(generator, config, state_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="tokentree", lifespan=lifespan)
    app.state.service, app.state.worker = service, service.worker
    app.state.metrics, app.state.keeper = service.metrics, service.keeper
    install_error_handlers(app)
    for methods, path, name, options in ROUTES:
        app.add_api_route(path, getattr(service, name), methods=methods, **options)
    app.add_middleware(
        Gate,
        metrics=service.metrics,
        routes=tuple(app.routes),  # the app's own routes, docs included
        api_key=config.resolved_api_key(),
        max_body_bytes=config.max_body_bytes,
        read_timeout=config.read_timeout,
    )
    return app
