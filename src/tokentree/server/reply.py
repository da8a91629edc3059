"""OpenAI response bodies and stream chunks of one request."""

from __future__ import annotations

import json
import time
import uuid

from ..toolcalls import ToolCallStream, parse_calls
from .worker import Result


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class Reply:
    """Builds OpenAI response bodies and stream chunks for one request."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int, tools: bool = False):
        """``tools``: the request declared tools; ``<tool_call>`` blocks in its text become
        ``tool_calls`` (streamed: held back until each block is complete)."""
        self.model, self.chat, self.prompt_tokens, self.tools = model, chat, prompt_tokens, tools
        self.streams: dict[int, ToolCallStream] = {}
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _usage(self, results: list[Result]) -> dict:
        completion = sum(result.completion_tokens for result in results)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def _choice(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        role: bool = False,
        whole: bool = False,
    ) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        if whole:
            message, calls = {"role": "assistant", "content": text}, []
            if self.tools:
                message["content"], calls = parse_calls(text or "")
                message |= {"tool_calls": calls} if calls else {}
            finish = "tool_calls" if calls else finish
            return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}
        delta = ({"role": "assistant", "content": ""} if role else {}) | (
            {"content": text} if text else {}
        )
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}

    def whole(self, texts: list[str], results: list[Result]) -> dict:
        """The whole response: choice i is ``texts[i]``; tokentree's statistics are the first
        choice's."""
        choices = [
            self._choice(i, text, result.finish_reason, whole=True)
            for i, (text, result) in enumerate(zip(texts, results))
        ]
        return self._envelope(choices, chunk=False) | {
            "usage": self._usage(results),
            "tokentree": results[0].stats,
        }

    def chunk(
        self, index: int, text: str | None = None, role: bool = False, finish: Result | None = None
    ) -> dict:
        choice = self._choice(index, text, finish.finish_reason if finish else None, role=role)
        body = self._envelope([choice], chunk=True)
        return body | ({"tokentree": finish.stats} if finish else {})

    def text_chunks(self, index: int, text: str) -> list[dict]:
        """The chunks of a piece of text: itself, or with tools what of it cannot start a call."""
        if not self.tools:
            return [self.chunk(index, text=text)]
        shown = self.streams.setdefault(index, ToolCallStream()).push(text)
        return [self.chunk(index, text=shown)] if shown else []

    def finish_chunks(self, index: int, result: Result) -> list[dict]:
        """The last chunks of choice ``index``: held-back text, its tool calls (one delta each, as
        the OpenAI client reassembles them) and the finish."""
        if not self.tools:
            return [self.chunk(index, finish=result)]
        rest, calls = self.streams.setdefault(index, ToolCallStream()).finish()
        chunks = [self.chunk(index, text=rest)] if rest else []
        for position, call in enumerate(calls):
            delta = {"tool_calls": [{"index": position} | call]}
            choice = {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}
            chunks.append(self._envelope([choice], chunk=True))
        if calls:
            result = Result(result.text, result.completion_tokens, "tool_calls", result.stats)
        return chunks + [self.chunk(index, finish=result)]

    def usage_chunk(self, results: list[Result]) -> dict:
        return self._envelope([], chunk=True) | {"usage": self._usage(results)}
