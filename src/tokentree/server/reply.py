"""OpenAI response bodies and stream chunks of one request."""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable

from ..logprobs import TokenLogprob
from ..toolcalls import ToolCallStream, parse_calls
from .worker import Result


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class Reply:
    """Builds OpenAI response bodies and stream chunks for one request."""

    def __init__(
        self,
        model: str,
        chat: bool,
        prompt_tokens: int,
        tools: bool = False,
        decode: Callable[[list[int]], str] = str,
    ):
        """``tools``: the request declared tools; ``<tool_call>`` blocks in its text become
        ``tool_calls`` (streamed: held back until each block is complete). ``decode``: token ids
        to text (the tokens of logprobs)."""
        self.model, self.chat, self.prompt_tokens, self.tools = model, chat, prompt_tokens, tools
        self.decode = decode
        self.streams: dict[int, ToolCallStream] = {}
        self.pending: dict[int, list[TokenLogprob]] = {}  # streamed logprobs not sent yet
        self.offsets: dict[int, int] = {}  # completions: characters of text before the pending
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
        logprobs: list[TokenLogprob] | None = None,
    ) -> dict:
        shown = self._logprobs(index, logprobs)
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": shown}
        if whole:
            message, calls = {"role": "assistant", "content": text}, []
            if self.tools:
                message["content"], calls = parse_calls(text or "")
                message |= {"tool_calls": calls} if calls else {}
            finish = "tool_calls" if calls else finish
            return {"index": index, "message": message, "finish_reason": finish, "logprobs": shown}
        delta = ({"role": "assistant", "content": ""} if role else {}) | (
            {"content": text} if text else {}
        )
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": shown}

    def _logprobs(self, index: int, items: list[TokenLogprob] | None) -> dict | None:
        """OpenAI's logprobs object of ``items`` (None: none asked or none to send)."""
        if not items:
            return None
        if self.chat:
            return {"content": [self._token(item) for item in items], "refusal": None}
        texts = [self.decode([item.token]) for item in items]
        offsets, at = [], self.offsets.get(index, 0)
        for text in texts:
            offsets.append(at)
            at += len(text)
        self.offsets[index] = at
        return {
            "tokens": texts,
            "token_logprobs": [item.logprob for item in items],
            "top_logprobs": [{self.decode([t]): lp for t, lp in item.top} for item in items],
            "text_offset": offsets,
        }

    def _token(self, item: TokenLogprob) -> dict:
        """One chat logprobs entry: the token's text, log-probability and bytes, and its top."""
        text = self.decode([item.token])
        top = [self._top(t, lp) for t, lp in item.top]
        return self._top(item.token, item.logprob, text) | {"top_logprobs": top}

    def _top(self, token: int, logprob: float, text: str | None = None) -> dict:
        text = self.decode([token]) if text is None else text
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def add_logprobs(self, index: int, items: list[TokenLogprob]) -> None:
        """Streamed logprobs of choice ``index``: sent with its next chunk."""
        self.pending.setdefault(index, []).extend(items)

    def _take_pending(self, index: int) -> list[TokenLogprob] | None:
        return self.pending.pop(index, None)

    def whole(self, texts: list[str], results: list[Result]) -> dict:
        """The whole response: choice i is ``texts[i]``; tokentree's statistics are the first
        choice's."""
        choices = [
            self._choice(i, text, result.finish_reason, whole=True, logprobs=result.logprobs)
            for i, (text, result) in enumerate(zip(texts, results))
        ]
        body = self._envelope(choices, chunk=False)
        prompt = results[0].prompt_logprobs  # vLLM's: each choice's (text), the reply's (chat)
        if prompt is not None:
            for holder in [body] if self.chat else choices:
                holder["prompt_logprobs"] = self.prompt_logprobs(prompt)
        return body | {"usage": self._usage(results), "tokentree": results[0].stats}

    def prompt_logprobs(self, items: list[TokenLogprob | None]) -> list[dict | None]:
        """vLLM's prompt_logprobs: per prompt token (None for the first) a map from token id to
        its logprob, rank (1: the best) and text, for the token itself and the top ones."""

        def entry(token: int, logprob: float, rank: int) -> dict:
            return {"logprob": logprob, "rank": rank, "decoded_token": self.decode([token])}

        shown: list[dict | None] = [None]
        for item in items[1:]:
            best = {str(t): entry(t, lp, rank) for rank, (t, lp) in enumerate(item.top, 1)}
            shown.append(best | {str(item.token): entry(item.token, item.logprob, item.rank)})
        return shown

    def chunk(
        self, index: int, text: str | None = None, role: bool = False, finish: Result | None = None
    ) -> dict:
        """A stream chunk of choice ``index`` (with its pending logprobs, unless ``role``)."""
        logprobs = None if role else self._take_pending(index)
        reason = finish.finish_reason if finish else None
        choice = self._choice(index, text, reason, role=role, logprobs=logprobs)
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
