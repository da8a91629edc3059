"""What every HTTP request passes before the app: the API key, the body size limit, the request
count.

A pure ASGI middleware (not ``@app.middleware("http")``, whose wrapper hides client disconnects
from the routes, so abandoned non-streaming jobs would never be cancelled). The key is checked
and the declared body size compared with the limit before a byte of the body is read; a body
that arrives without a length is cut off at the limit. Counts are keyed by route, never by the
raw path, so random paths cannot grow the metrics.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Awaitable, Callable, Sequence

from starlette.exceptions import HTTPException

from .errors import error_body
from .metrics import Metrics

OPEN_ROUTES = frozenset({"/health"})  # answered without the API key (load-balancer probes)
UNMATCHED = "unmatched"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body grows past the limit (FastAPI passes HTTP exceptions
    on)."""

    def __init__(self, limit: int):
        super().__init__(
            413,
            f"the request body is larger than the server's limit of {limit} bytes "
            "(--max-body-bytes)",
        )


def route_label(path: str, routes: Sequence) -> str:
    """The metrics label of ``path``: the template of the app's route that matches it
    (``/v1/models/{model}``), or UNMATCHED."""
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            return route.path_format
    return UNMATCHED


def bearer_matches(header: str, key: str) -> bool:
    """``Authorization: Bearer <key>`` (the scheme in any case), compared in constant time."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode(), key.encode()
    )


async def send_json(
    send: Callable[[dict], Awaitable[None]], status: int, body: dict, headers: dict | None = None
):
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BodyTooSlow(HTTPException):
    """Raised from ``receive`` when the next part of a body does not arrive in time (a slow or
    stalled client must not hold a connection and a request slot)."""

    def __init__(self, seconds: float):
        super().__init__(
            408, f"the request body did not arrive within {seconds:g} s (--read-timeout)"
        )


class Gate:
    def __init__(
        self,
        app,
        metrics: Metrics,
        routes: Sequence,  # the app's own routes (Starlette routes)
        api_key: str | None,
        max_body_bytes: int,
        read_timeout: float = 10.0,
    ):
        self.app, self.metrics, self.routes = app, metrics, routes
        self.api_key, self.max_body_bytes = api_key, max_body_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status: list[int] = []

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await send_json(counted_send, *refusal)
                return
            await self.app(scope, self._limited(receive), counted_send)
        finally:
            self.metrics.request_done(
                route_label(scope["path"], self.routes), status[0] if status else 500
            )

    def _refusal(self, scope) -> tuple | None:
        """(status, body, headers) when the request is refused before the app sees it."""
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        if (
            self.api_key is not None
            and scope["path"] not in OPEN_ROUTES
            and not bearer_matches(headers.get("authorization", ""), self.api_key)
        ):
            return (
                401,
                error_body(
                    "invalid or missing API key (send 'Authorization: Bearer <key>')",
                    code="invalid_api_key",
                ),
                {"WWW-Authenticate": "Bearer"},
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return (
                413,
                error_body(BodyTooLarge(self.max_body_bytes).detail, code="body_too_large"),
                None,
            )
        return None

    def _limited(self, receive):
        """``receive`` with the body's size limit, and the read timeout for each part of the body
        until its last (later calls wait for a disconnect, as long as a response streams)."""
        received, complete = 0, False

        async def limited_receive() -> dict:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                raise BodyTooSlow(self.read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return limited_receive
