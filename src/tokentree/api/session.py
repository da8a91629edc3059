"""Many sequences decoded together: :class:`BatchSession`, the batch engine behind a generator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..backends import make_batch_target
from ..batch import BatchEngine
from ..drafters import Drafter
from ..errors import TokentreeError
from ..logprobs import TokenLogprob
from ..request import Request
from ..stats import GenerationStats
from ..text import TextStream
from .stream import Output

if TYPE_CHECKING:
    from .generator import Generator


class BatchSession:
    """Sequences decoded together over the target (see :class:`tokentree.batch.BatchEngine`):
    :meth:`add` prompts between steps, :meth:`step`, read each slot's text as it grows, and
    :meth:`release` a finished slot for its :class:`Output`."""

    def __init__(self, generator: Generator, max_batch: int):
        if generator.static is not None:
            raise TokentreeError(
                "--static-cache decodes one sequence at a time: leave it out for batches "
                "(--max-batch, n > 1)"
            )
        self.generator = generator
        self.engine = BatchEngine(
            make_batch_target(generator.target.model, max_batch),
            generator.drafter,
            generator.target.eos_ids,
            grammar=generator.grammar,
        )
        self.texts: dict[int, TextStream] = {}
        self.stats: dict[int, GenerationStats] = {}
        self.reasons: dict[int, str] = {}  # finished slots: "stop", "length" or "cancelled"

    @property
    def free_slots(self) -> list[int]:
        return [slot for slot in self.engine.free_slots if slot not in self.texts]

    @property
    def capacity(self) -> int:
        """Sequences this session decodes together at most."""
        return len(self.engine.lanes)

    @property
    def cells(self) -> int | None:
        """Cache cells all its sequences share (None: the cache grows as they need)."""
        return self.engine.target.capacity

    @property
    def busy(self) -> bool:
        """Some sequence is still being decoded."""
        return bool(self.engine.runs)

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether such a sequence has room in the shared cache now."""
        return self.engine.fits(prompt_tokens, max_new_tokens)

    def add(
        self,
        prompt_ids: list[int],
        request: Request | None = None,
        drafter: Drafter | None = None,
        **changes: Any,
    ) -> int:
        """Start a sequence of ``request`` (prefilled now; keyword ``changes`` as in
        :meth:`Generator.stream`); its slot. ``drafter``: a drafter object in place of the one the
        request names."""
        gen = self.generator
        if isinstance(drafter, str):
            changes["drafter"] = drafter
            drafter = None
        chosen, request, planner = gen.prepare(Request.build(request, **changes), drafter)
        free = self.free_slots  # not the engine's: a finished slot is not free until released
        if not free:
            raise TokentreeError(f"the batch is full ({self.capacity} sequences)")
        stats = GenerationStats()
        slot = self.engine.add(
            prompt_ids, request, stats, drafter=chosen, planner=planner, slot=free[0]
        )
        self.texts[slot], self.stats[slot] = TextStream(gen.tokenizer, list(request.stop)), stats
        return slot

    def run_all(
        self, jobs: Sequence[tuple[list[int], Request]], drafter: Drafter | None = None
    ) -> list[Output]:
        """Decode every (prompt ids, request) to the end, a waiting one joining when a slot
        frees; the outputs in order."""
        slots: dict[int, int] = {}  # job index -> slot
        outputs: dict[int, Output] = {}
        waiting = list(range(len(jobs)))[::-1]
        while waiting or self.busy:
            while waiting and self.free_slots:
                index = waiting.pop()
                slots[index] = self.add(*jobs[index], drafter=drafter)
            self.step()
            for index, slot in list(slots.items()):
                if self.finished(slot):
                    outputs[index] = self.release(slot)
                    del slots[index]
        return [outputs[i] for i in range(len(jobs))]

    def step(self) -> dict[int, str]:
        """One forward for every running sequence; the new final text of each (finished ones
        too)."""
        pieces = {}
        for slot, tokens in self.engine.step().items():
            text = self.texts[slot]
            pieces[slot] = text.push(tokens)
            if text.stopped:
                self.engine.cancel(slot)
                self.reasons[slot] = "stop"
            elif slot not in self.engine.runs:  # EOS or length
                pieces[slot] += text.finish()
                eos = bool(text.token_ids) and text.token_ids[-1] in self.generator.target.eos_ids
                self.reasons[slot] = "stop" if eos or self.stats[slot].complete else "length"
        return pieces

    def logprobs(self, slot: int) -> list[TokenLogprob] | None:
        """The logprobs of ``slot``'s tokens so far (None: its request asked for none)."""
        stats = self.stats[slot]
        if stats.logprobs is None:
            return None
        return stats.logprobs[: len(self.texts[slot].token_ids)]

    def finished(self, slot: int) -> bool:
        return slot in self.reasons

    def cancel(self, slot: int) -> None:
        """Stop ``slot`` now (between steps); :meth:`release` it as usual."""
        if slot in self.texts and slot not in self.reasons:
            self.engine.cancel(slot)
            self.reasons[slot] = "cancelled"

    def finish_reason(self, slot: int) -> str:
        return self.reasons[slot]

    def release(self, slot: int) -> Output:
        """A finished (or cancelled) slot's output; the slot is free again."""
        self.cancel(slot)
        text, stats = self.texts.pop(slot), self.stats.pop(slot)
        self.reasons.pop(slot)
        return Output.of(text, stats)
