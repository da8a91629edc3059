"""What a generation gives back: :class:`GenerationStream` while it runs, :class:`Output` at the
end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..engine import Engine
from ..logprobs import TokenLogprob
from ..request import Request
from ..stats import GenerationStats
from ..text import TextStream


@dataclass
class Output:
    """A finished generation: the new text, the new token ids and the statistics; with a request's
    ``logprobs``, one :class:`~tokentree.logprobs.TokenLogprob` per new token; with its
    ``prompt_logprobs``, one per prompt token (None for the first)."""

    text: str
    token_ids: list[int]
    stats: GenerationStats
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @classmethod
    def of(cls, text: TextStream, stats: GenerationStats) -> Output:
        """The output of a finished text stream and its statistics (logprobs cut where a stop
        string cut the tokens)."""
        token_ids = list(text.token_ids)
        logprobs = None if stats.logprobs is None else stats.logprobs[: len(token_ids)]
        return cls(text.text, token_ids, stats, logprobs, stats.prompt_logprobs)


class GenerationStream:
    """Iterate to receive text pieces; ``text``, ``token_ids`` and ``stats`` fill in as it runs."""

    def __init__(self, engine: Engine, prompt_ids: list[int], request: Request, text: TextStream):
        self.stats = GenerationStats()
        self.text_stream = text
        self.eos_ids = engine.eos_ids
        self.cancelled = False  # set from any thread: the run ends after the current step
        self._pieces = self._run(engine, prompt_ids, request)

    def _run(self, engine: Engine, prompt_ids: list[int], request: Request) -> Iterator[str]:
        for tokens in engine.run(prompt_ids, request, self.stats):
            piece = self.text_stream.push(tokens)
            if piece:
                yield piece
            if self.text_stream.stopped or self.cancelled:
                return
        piece = self.text_stream.finish()
        if piece:
            yield piece

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def text(self) -> str:
        return self.text_stream.text

    @property
    def token_ids(self) -> list[int]:
        return list(self.text_stream.token_ids)

    @property
    def finish_reason(self) -> str:
        """ "stop" after an EOS token or a stop string, else "length" (or "cancelled")."""
        if self.text_stream.stopped or self.stats.complete:
            return "stop"
        if self.token_ids and self.token_ids[-1] in self.eos_ids:
            return "stop"
        return "cancelled" if self.cancelled else "length"

    def output(self) -> Output:
        """Run to the end and return the whole result."""
        for _ in self._pieces:
            pass
        return Output.of(self.text_stream, self.stats)

    @property
    def logprobs(self) -> list[TokenLogprob] | None:
        """The logprobs of the tokens so far (None: the request asked for none)."""
        if self.stats.logprobs is None:
            return None
        return self.stats.logprobs[: len(self.text_stream.token_ids)]
