"""One HTTP request through an ASGI app in this process, its response streamed back as the app
sends it: how a replica runs the whole single-machine app (gate, limits, errors, streaming) for a
request the ingress forwarded."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

# an HTTP request as the ingress forwards it: method, path, query, headers [(name, value)], body
Envelope = dict[str, Any]


def scope_of(envelope: Envelope) -> dict:
    """The ASGI HTTP scope of ``envelope``."""
    path = envelope["path"]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": envelope["method"],
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": envelope.get("query", "").encode(),
        "root_path": "",
        "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in envelope["headers"]
        ],  # fmt: skip
        "client": tuple(envelope.get("client") or ("127.0.0.1", 0)),
        "server": ("127.0.0.1", 80),
    }


async def call_app(app, envelope: Envelope) -> AsyncIterator[dict | bytes]:
    """Yield ``{"status", "headers"}`` when the app starts its response, then each non-empty chunk
    of its body. When the caller stops iterating (its client left), the app receives
    ``http.disconnect``, as from a closed connection."""
    sent: asyncio.Queue = asyncio.Queue()
    body_given, gone = False, asyncio.Event()

    async def receive() -> dict:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": envelope["body"], "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    task = asyncio.create_task(app(scope_of(envelope), receive, sent.put))
    try:
        while True:
            message = await _next_message(sent, task)
            if message is None:
                return
            if message["type"] == "http.response.start":
                headers = [(k.decode("latin-1"), v.decode("latin-1"))
                           for k, v in message.get("headers", [])]  # fmt: skip
                yield {"status": message["status"], "headers": headers}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()
        await asyncio.wait({task}, timeout=5)


async def _next_message(sent: asyncio.Queue, task: asyncio.Task) -> dict | None:
    """The app's next message; None when it returned without one (its exception, if any,
    raised)."""
    getter = asyncio.ensure_future(sent.get())
    done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    if not sent.empty():
        return sent.get_nowait()
    task.result()
    return None
