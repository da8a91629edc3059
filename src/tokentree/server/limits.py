"""What this server accepts: its limits, checked before a request is queued, each refusal a 400
that names the field."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ServeConfig
from .errors import APIError


@dataclass(frozen=True)
class Limits:
    """The sizes a request may have on this server (from its config and the model's context)."""

    context: int  # the model's context in tokens
    prompt: int  # prompt tokens at most
    new_tokens: int  # new tokens a request may ask for at most
    prompt_name: str  # what sets ``prompt`` (for messages)
    new_tokens_name: str
    default_max_tokens: int
    max_stops: int
    max_stop_length: int
    max_queue: int
    max_batch: int

    @classmethod
    def of(cls, config: ServeConfig, context_limit: int | None) -> Limits:
        context = context_limit or 1 << 30
        prompt = min(context, config.max_prompt_tokens or context)
        new_tokens = min(context, config.max_tokens_limit or context)
        return cls(
            context,
            prompt,
            new_tokens,
            "the model's context" if prompt == context else "--max-prompt-tokens",
            "the model's context" if new_tokens == context else "--max-tokens-limit",
            config.default_max_tokens,
            config.max_stops,
            config.max_stop_length,
            config.max_queue,
            config.max_batch,
        )

    def check_prompt(self, tokens: int, param: str) -> None:
        if tokens > self.prompt:
            raise APIError(
                400,
                f"the prompt has {tokens} tokens, over {self.prompt_name} of {self.prompt} tokens",
                param=param,
                code="context_length_exceeded",
            )

    def check_stops(self, stops: list[str]) -> None:
        if len(stops) > self.max_stops or any(
            not 0 < len(stop) <= self.max_stop_length for stop in stops
        ):
            raise APIError(
                400,
                f"give at most {self.max_stops} stop strings of 1 to {self.max_stop_length} "
                "characters",
                param="stop",
            )

    def check_choices(self, n: int) -> None:
        if n > 1 and self.max_batch < 2:
            raise APIError(
                400, "n > 1 needs a server started with --max-batch 2 or more", param="n"
            )
        if n > self.max_queue:  # it could never be queued: a 429 would be retried forever
            raise APIError(
                400,
                f"n = {n} can never be served: this server queues at most {self.max_queue} "
                "requests (--max-queue)",
                param="n",
            )

    def new_tokens_for(self, asked: int | None, prompt_tokens: int, param: str) -> int:
        """The new tokens a request gets: ``asked`` (None: the server's default, as the context
        allows) when it fits the limit and the context."""
        if asked is not None and asked > self.new_tokens:
            raise APIError(
                400,
                f"max_tokens {asked} is over {self.new_tokens_name} of {self.new_tokens} tokens",
                param="max_tokens",
            )
        room = self.context - prompt_tokens
        max_new = asked or min(self.default_max_tokens, self.new_tokens, room)
        if max_new > room or room < 1:
            raise APIError(
                400,
                f"the prompt has {prompt_tokens} tokens and asks for {max_new} more, over the "
                f"model's context of {self.context} tokens",
                param=param,
                code="context_length_exceeded",
            )
        return max_new
