"""Incremental detokenization with stop strings."""

from __future__ import annotations

from typing import Sequence

LEFT_CONTEXT = 4  # tokens decoded before the new ones, so their text comes out as in the whole


class TextStream:
    """Turns token ids, arriving a few at a time, into final text pieces.

    Text is held back while it may still change: an incomplete UTF-8 character at the end, or a
    tail that is the beginning of a stop string. Once a stop string appears, the text ends
    just before it and ``stopped`` is True.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.token_ids: list[int] = []
        self.text = ""  # emitted so far
        self.stopped = False
        # token_ids[:_head] decode to _head_text, and no later token changes that text
        self._head = 0
        self._head_text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _full_text(self) -> str:
        """The text of all tokens, decoding only those after the head (with a few tokens before it
        as context: tokenizers that drop a leading space need them), so a step costs O(new
        tokens)."""
        context = self.token_ids[max(0, self._head - LEFT_CONTEXT) : self._head]
        left, both = self._decode(context), self._decode(context + self.token_ids[self._head :])
        if not both.startswith(left) or left.endswith(
            "\ufffd"
        ):  # the tokenizer merged across the boundary
            self._head, self._head_text = 0, ""
            return self._decode(self.token_ids)
        tail = both[len(left) :]
        if not tail.endswith("\ufffd"):  # every character complete: later tokens cannot change it
            self._head, self._head_text = len(self.token_ids), self._head_text + tail
            return self._head_text
        return self._head_text + tail

    def push(self, tokens: Sequence[int]) -> str:
        """Add tokens; return the newly final text."""
        if self.stopped:
            return ""
        before = len(self.token_ids)
        self.token_ids.extend(tokens)
        full = self._full_text()
        hit = self._find_stop(full)
        if hit is not None:
            self.stopped = True
            self._trim_tokens_to_stop(hit, before)
            return self._emit(full[:hit])
        final = min(len(full.rstrip("\ufffd")), len(full) - self._stop_prefix_at_end(full))
        return self._emit(full[: max(final, len(self.text))])

    def finish(self) -> str:
        """The generation ended: release the held-back text."""
        if self.stopped:
            return ""
        return self._emit(self._full_text())

    def _emit(self, upto: str) -> str:
        piece = upto[len(self.text) :]
        self.text = upto
        return piece

    def _stop_prefix_at_end(self, full: str) -> int:
        """Length of the longest tail of ``full`` that begins some stop string."""
        return max((stop_prefix_at_end(full, s) for s in self.stop), default=0)

    def _find_stop(self, full: str) -> int | None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _trim_tokens_to_stop(self, hit: int, before: int) -> None:
        """Keep the shortest token prefix whose text already contains the stop string (the first
        ``before`` tokens did not contain it)."""
        for k in range(before + 1, len(self.token_ids) + 1):
            if self._find_stop(self._decode(self.token_ids[:k])) == hit:
                self.token_ids = self.token_ids[:k]
                return


def stop_prefix_at_end(text: str, stop: str) -> int:
    """Length of the longest proper prefix of ``stop`` that ``text`` ends with (0: none).

    Only prefixes ending in ``text``'s last character are compared, longest first, each in C, so a
    step costs about len(stop) character comparisons, not the len(stop)^2 of trying every prefix.
    """
    if not text:
        return 0
    last, k = text[-1], min(len(stop) - 1, len(text))
    while k > 0:
        k = stop.rfind(last, 0, k) + 1  # the longest candidate: stop[k - 1] == last
        if k and text.endswith(stop[:k]):
            return k
        k -= 1
    return 0
