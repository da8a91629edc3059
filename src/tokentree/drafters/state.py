"""Saving and loading drafter state (tries, matrices, learned shapes) across processes.

A state file is gzip-compressed JSON: a versioned header naming the drafter and the vocabulary it
was learned on, then the drafter's own ``state_dict()``. Writes are atomic (temp file, rename).
Anything wrong with a file (corrupt, truncated, other drafter, other vocabulary) is a clear
TokentreeError, never a crash and never silent reuse.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from ..errors import TokentreeError
from ..files import write_atomically
from .base import LearningDrafter

FORMAT = "tokentree-drafter-state"
VERSION = 1


def vocab_signature(tokenizer: Any) -> str:
    """A short hash of the tokenizer's token -> id table."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def require_stateful(drafter: Any) -> None:
    if not isinstance(drafter, LearningDrafter):
        raise TokentreeError(f"drafter '{drafter.name}' keeps no state to save or load")


def state_document(drafter: Any, vocab: str) -> dict:
    """What a state file holds: the header and ``drafter``'s state (fresh containers, so it can be
    written by another thread while the drafter goes on learning)."""
    require_stateful(drafter)
    return {
        "format": FORMAT,
        "version": VERSION,
        "drafter": drafter.name,
        "vocab": vocab,
        "state": drafter.state_dict(),
    }


def write_state(document: dict, path: str | Path) -> None:
    """Write a :func:`state_document` to ``path`` atomically."""
    data = json.dumps(document, separators=(",", ":")).encode()
    write_atomically(Path(path), gzip.compress(data, mtime=0))


def save_state(drafter: Any, path: str | Path, vocab: str) -> None:
    """Write ``drafter``'s state to ``path`` atomically."""
    write_state(state_document(drafter, vocab), path)


def load_state(drafter: Any, path: str | Path, vocab: str, vocab_size: int) -> None:
    """Replace ``drafter``'s state with the one saved in ``path``."""
    require_stateful(drafter)
    path = Path(path)
    try:
        document = json.loads(gzip.decompress(path.read_bytes()))
    except FileNotFoundError:
        raise TokentreeError(f"drafter state file not found: {path}") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokentreeError(f"drafter state file {path} is corrupt or truncated ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise TokentreeError(f"{path} is not a tokentree drafter state file")
    if document.get("version") != VERSION:
        raise TokentreeError(
            f"{path} has state format version {document.get('version')}; this tokentree reads "
            f"version {VERSION}"
        )
    if document.get("drafter") != drafter.name:
        raise TokentreeError(
            f"{path} holds state of drafter '{document.get('drafter')}', not '{drafter.name}'"
        )
    if document.get("vocab") != vocab:
        raise TokentreeError(
            f"{path} was learned with another vocabulary (tokenizer); it cannot be reused here"
        )
    if not isinstance(document.get("state"), dict):
        raise TokentreeError(f"drafter state file {path} is malformed (its state is not an object)")
    try:
        drafter.load_state_dict(document["state"], vocab_size)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise TokentreeError(f"drafter state file {path} is malformed ({exc})") from exc
