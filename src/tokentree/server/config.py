"""Server options, importable without the server's dependencies (the CLI builds flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TokentreeError


@dataclass
class ServeConfig:
    """Options of ``tokentree serve`` (one field per flag)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None  # default: the target's name
    max_queue: int = 16  # requests waiting beyond the running one; more get 429
    request_timeout: float = 600.0  # seconds from arrival to the last token
    default_max_tokens: int = 512  # when a request gives no max_tokens
    shutdown_grace: float = 10.0  # seconds in-flight requests get to finish on shutdown

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise TokentreeError(f"--port must be in [0, 65535], got {self.port}")
        for name in ("max_queue", "request_timeout", "default_max_tokens"):
            if getattr(self, name) <= 0:
                raise TokentreeError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
