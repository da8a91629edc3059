"""OpenAI response bodies and stream chunks of one request."""

from __future__ import annotations

import json
import time
import uuid

from .worker import Result


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class Reply:
    """Builds OpenAI response bodies and stream chunks for one request."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int):
        self.model, self.chat, self.prompt_tokens = model, chat, prompt_tokens
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
            return {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
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

    def usage_chunk(self, results: list[Result]) -> dict:
        return self._envelope([], chunk=True) | {"usage": self._usage(results)}
