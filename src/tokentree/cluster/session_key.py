"""Which conversation a request belongs to, so its later turns reach the replica that holds its
prompt cache and what its drafters learned. Pure: headers and body in, a key (or None) out."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

SESSION_HEADER = "x-session-id"
PREFIX_CHARS = 256  # a text prompt's opening that names its conversation


def session_key(headers: Sequence[tuple[str, str]], body: bytes) -> str | None:
    """The request's conversation: the ``X-Session-ID`` header, else the body's ``user``, else a
    hash of the prompt's opening (the first messages of a chat, the first characters of a text
    prompt; None when the body names none)."""
    for name, value in headers:
        if name.lower() == SESSION_HEADER and value:
            return "session:" + value
    try:
        request = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None  # the replica answers the malformed body
    if not isinstance(request, dict):
        return None
    if isinstance(request.get("user"), str) and request["user"]:
        return "user:" + request["user"]
    opening = _opening(request)
    if not opening:
        return None
    return "prefix:" + hashlib.sha256(opening.encode("utf-8", "replace")).hexdigest()[:16]


def _opening(request: dict) -> str:
    """What every turn of the conversation starts with: a chat's first two messages (the system
    prompt and the first user turn), a text prompt's first PREFIX_CHARS characters."""
    messages = request.get("messages")
    if isinstance(messages, list):
        first = [m.get("content") if isinstance(m, dict) else m for m in messages[:2]]
        return json.dumps(first, sort_keys=True)
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt[:PREFIX_CHARS]
    if isinstance(prompt, list):
        return json.dumps(prompt[:PREFIX_CHARS])
    return ""


def rendezvous_order(key: str, names: Sequence[str]) -> list[int]:
    """Indices of ``names`` (replicas) best first for ``key`` by rendezvous hashing: every router
    agrees without shared state, and a replica that leaves or joins moves only its own keys."""

    def weight(name: str) -> bytes:
        return hashlib.blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest()

    return sorted(range(len(names)), key=lambda i: weight(names[i]), reverse=True)
