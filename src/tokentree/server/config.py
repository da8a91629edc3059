"""Server options, importable without the server's dependencies (the CLI builds flags from them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import TokentreeError

API_KEY_ENV = "TOKENTREE_API_KEY"


@dataclass
class ServeConfig:
    """Options of ``tokentree serve`` (one field per flag)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # also read from $TOKENTREE_API_KEY or --api-key-file (not visible in ps)
    api_key: str | None = None
    api_key_file: str | None = None  # a file whose first line is the API key
    served_model_name: str | None = None  # default: the target's name
    max_queue: int = 16  # requests waiting beyond the running ones; more get 429
    max_batch: int = 1  # requests decoded together, one forward per step
    request_timeout: float = 600.0  # seconds from arrival to the last token
    default_max_tokens: int = 512  # when a request gives no max_tokens
    shutdown_grace: float = 10.0  # seconds in-flight requests get to finish on shutdown
    max_body_bytes: int = 4 << 20  # larger request bodies get 413 before they are read
    max_prompt_tokens: int = 0  # longer prompts get 400; 0 = the model's context
    max_tokens_limit: int = 0  # requests asking more new tokens get 400; 0 = the model's context
    max_stops: int = 16  # stop strings per request
    max_stop_length: int = 256  # characters per stop string
    save_every: float = 60.0  # seconds between saves of --drafter-state (0: only at shutdown)
    read_timeout: float = 10.0  # seconds a client may take for its request headers, for each
    # part of its body, and an idle keep-alive connection may stay open
    max_connections: int = 256  # open connections at most; more are answered 503
    # control tokens typed inside chat messages (<|im_start|>) are text unless this is set
    allow_special_in_content: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise TokentreeError(f"--port must be in [0, 65535], got {self.port}")
        for name in (
            "max_queue",
            "max_batch",
            "request_timeout",
            "default_max_tokens",
            "max_body_bytes",
            "max_stops",
            "max_stop_length",
            "read_timeout",
            "max_connections",
        ):
            if getattr(self, name) <= 0:
                raise TokentreeError(
                    f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        for name in ("max_prompt_tokens", "max_tokens_limit", "shutdown_grace", "save_every"):
            if getattr(self, name) < 0:
                raise TokentreeError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )

    def resolved_api_key(self) -> str | None:
        """The key from --api-key, else --api-key-file, else $TOKENTREE_API_KEY (None: no key)."""
        if self.api_key:
            return self.api_key
        if self.api_key_file:
            try:
                key = Path(self.api_key_file).read_text().strip().splitlines()
            except OSError as exc:
                raise TokentreeError(
                    f"--api-key-file {self.api_key_file}: {exc.strerror}"
                ) from None
            if not key or not key[0].strip():
                raise TokentreeError(f"--api-key-file {self.api_key_file} is empty")
            return key[0].strip()
        return os.environ.get(API_KEY_ENV) or None
