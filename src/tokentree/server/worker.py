"""One model worker thread serving jobs from a bounded queue: one at a time, or (``max_batch`` > 1)
up to ``max_batch`` at once, joining and leaving between steps."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ..api import BatchSession, GenerationStream, Generator
from ..api.rollouts import Rollout
from ..errors import TokentreeError
from ..logprobs import TokenLogprob
from ..request import Request

log = logging.getLogger("tokentree.server")


@dataclass
class Result:
    """What a finished job reports (``logprobs``: one per token, when the request asked)."""

    text: str
    completion_tokens: int
    finish_reason: str
    stats: dict
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class Job:
    """One generation (one choice of a request). Events, in order, each as (index, kind, value):
    ("text", str)* (each after a ("logprobs", [TokenLogprob]) of the tokens since the last, when
    the request asked for logprobs), then ("done", Result) or ("error", (status, message)). The
    ``n`` jobs of one request share their ``events`` queue and tell their events apart by
    ``index``. A ``rollout`` job (batch mode only) posts no text, then ("done", RolloutTree)."""

    prompt_ids: list[int]
    request: Request
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    index: int = 0  # the choice this job answers
    queued_at: float = 0.0  # monotonic times: submitted, and its generation started (0: not yet)
    started_at: float = 0.0
    cancelled: threading.Event = field(default_factory=threading.Event)
    stream: GenerationStream | None = None
    rollout: Rollout | None = None  # its branches are sequences of the worker's session

    logprobs_sent: int = 0  # logprobs posted so far

    def post(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, value))

    def post_text(self, piece: str, logprobs: list[TokenLogprob] | None) -> None:
        """A piece of text, after the logprobs of the tokens not posted yet."""
        if logprobs is not None and len(logprobs) > self.logprobs_sent:
            self.post("logprobs", logprobs[self.logprobs_sent :])
            self.logprobs_sent = len(logprobs)
        self.post("text", piece)

    def cancel(self) -> None:
        """Stop after the current step (or never start); safe from any thread."""
        self.cancelled.set()
        if self.stream is not None:
            self.stream.cancelled = True


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


SHUTTING_DOWN = (503, "the server is shutting down")
INTERNAL_ERROR = (500, "internal error while generating (see the server log)")


class Worker:
    """Runs jobs one at a time in its own thread; at most ``max_queue`` live jobs wait.

    A job whose client went away (or timed out) is cancelled and gives its queue slot back at
    once: only live jobs count against ``max_queue`` and in :attr:`depth`.
    """

    def __init__(self, generator: Generator, max_queue: int, max_batch: int = 1):
        self.generator = generator
        self.max_queue = max_queue
        self.max_batch = max_batch
        # made here, so a target that cannot batch is refused when the server starts
        self.session = generator.batch_session(max_batch) if max_batch > 1 else None
        self.running: Job | None = None
        self.batched: dict[int, Job] = {}  # batch mode: slot -> its job
        self.rolling: list[Job] = []  # batch mode: rollouts being decoded
        self.peak_batch = 0  # the most jobs decoded together so far
        self.stopping = False
        # monotonic time by which a shutdown ends the running job
        self.deadline: float | None = None
        self._waiting: collections.deque[Job] = collections.deque()
        self._chores: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="tokentree-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether its thread still serves (a health check's question)."""
        return self._thread.is_alive()

    def _live_waiting(self) -> int:
        """Drop cancelled jobs from the queue; the number left (call with the lock held)."""
        live = [job for job in self._waiting if not job.cancelled.is_set()]
        if len(live) != len(self._waiting):
            self._waiting = collections.deque(live)
        return len(live)

    @property
    def batch_size(self) -> int:
        """Jobs being decoded now."""
        rollouts = sum(job.rollout.live for job in list(self.rolling) if job.rollout is not None)
        return len(self.batched) + rollouts or int(self.running is not None)

    @property
    def depth(self) -> int:
        """Live jobs waiting or running."""
        with self._ready:
            running = self.running is not None and not self.running.cancelled.is_set()
            batched = sum(not job.cancelled.is_set() for job in list(self.batched.values()))
            rolling = sum(not job.cancelled.is_set() for job in list(self.rolling))
            return self._live_waiting() + running + batched + rolling

    def submit(self, *jobs: Job) -> None:
        """Queue ``jobs`` (the choices of one request): all of them, or none when the queue lacks
        room."""
        with self._ready:
            if self.stopping:
                raise ShuttingDown()
            if self._live_waiting() + len(jobs) > self.max_queue:
                raise QueueFull()
            for job in jobs:
                job.queued_at = time.monotonic()
            self._waiting.extend(jobs)
            self._ready.notify()

    def between_steps(self, chore: Callable[[], Any]) -> Future:
        """Run ``chore`` on the worker thread between two steps (no generation is mid-forward, so
        the drafters' state holds still); its result comes back through the future."""
        future: Future = Future()
        with self._ready:
            if self.stopping:
                raise ShuttingDown()
            self._chores.append((chore, future))
            self._ready.notify()
        return future

    def _run_chores(self) -> None:
        while True:
            with self._ready:
                if not self._chores:
                    return
                chore, future = self._chores.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(chore())
                except Exception as exc:  # noqa: BLE001 - handed to whoever asked
                    future.set_exception(exc)

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new jobs, answer the queued ones 503 now, give the running one ``grace``
        seconds."""
        with self._ready:
            self.stopping = True
            self.deadline = time.monotonic() + grace
            queued, self._waiting = list(self._waiting), collections.deque()
            chores, self._chores = list(self._chores), collections.deque()
            self._ready.notify()
        for _, future in chores:
            future.cancel()
        for job in queued:
            job.cancel()
            job.post("error", SHUTTING_DOWN)

    def stop(self) -> None:
        """Abort queued jobs, stop the running one after its current step, end the thread."""
        self.begin_shutdown(0.0)
        for job in [self.running, *list(self.batched.values()), *list(self.rolling)]:
            if job is not None:
                job.cancel()
        self._thread.join(timeout=30)

    def _next(self) -> Job | None:
        """The next live job, waiting for one; None once shutting down."""
        while True:
            self._run_chores()
            with self._ready:
                if self.stopping:
                    return None
                if self._chores:
                    continue
                if self._live_waiting():
                    self.running = self._waiting.popleft()
                    return self.running
                self._ready.wait()

    def _serve(self) -> None:
        if self.max_batch > 1:
            self._serve_batches()
            return
        while (job := self._next()) is not None:
            try:
                self._run(job)
            finally:
                self.running = None

    def _run(self, job: Job) -> None:
        job.started_at = time.monotonic()
        try:
            stream = self.generator.stream(job.prompt_ids, job.request)
            job.stream = stream
            if job.cancelled.is_set():
                stream.cancelled = True
            for piece in stream:
                job.post_text(piece, stream.logprobs)
                self._run_chores()  # between steps: a state snapshot does not wait for the end
            output = stream.output()
            job.post("done", Result(output.text, len(output.token_ids), stream.finish_reason,
                                    output.stats.to_dict(), output.logprobs,
                                    output.prompt_logprobs))  # fmt: skip
        except TokentreeError as exc:
            job.post("error", (400, str(exc)))
        except Exception:
            # a bug, not a user mistake: log it, answer 500 (details stay in the log), keep serving
            log.exception("generation failed")
            job.post("error", INTERNAL_ERROR)

    # ------------------------------------------------------------------ batch mode
    def _serve_batches(self) -> None:
        session = self.session
        while True:
            self._run_chores()
            while (job := self._admit(session)) is not None:
                self._start(session, job)
            for slot, job in list(self.batched.items()):
                if job.cancelled.is_set():
                    session.cancel(slot)
                    self._finish(session, slot)
            for job in [job for job in self.rolling if job.cancelled.is_set()]:
                self._end_rollout(job, None)
            if not session.busy:
                if self.stopping:
                    return
                continue
            try:
                pieces = session.step()
            except Exception:
                # a failed forward takes every sequence in it: answer all, keep serving
                log.exception("batch step failed")
                for slot in list(self.batched):
                    self.batched[slot].post("error", INTERNAL_ERROR)
                    session.cancel(slot)
                    session.release(slot)
                    del self.batched[slot]
                for job in list(self.rolling):
                    self._end_rollout(job, ("error", INTERNAL_ERROR))
                continue
            for slot, piece in pieces.items():
                if slot not in self.batched:
                    continue  # a rollout's branch: its rollout reads it
                if piece:
                    self.batched[slot].post_text(piece, session.logprobs(slot))
                if session.finished(slot):
                    self._finish(session, slot)
            self._advance_rollouts()

    def _admit(self, session: BatchSession) -> Job | None:
        """The next live job to start now, if a slot is free and its cells fit beside the running
        sequences; waits for one while nothing runs. None once shutting down."""
        with self._ready:
            while (
                not self.stopping
                and not session.busy
                and not self._live_waiting()
                and not self._chores
            ):
                self._ready.wait()
            if self.stopping or not session.free_slots or not self._live_waiting():
                return None
            if not self._has_room(session, self._waiting[0]):
                return None  # it waits for running sequences to finish
            return self._waiting.popleft()

    def _has_room(self, session: BatchSession, job: Job) -> bool:
        """Whether ``job`` fits beside the running sequences and what the running rollouts may
        still need (the slots of their future branches, every cell their trees may take)."""
        rollouts = [j.rollout for j in self.rolling if j.rollout is not None]
        slots = len(session.free_slots) - sum(r.policy.slots - r.live for r in rollouts)
        cells = sum(r.cells for r in rollouts)
        if job.rollout is not None:
            wanted = job.rollout.policy.slots
            return slots >= wanted and session.fits(len(job.prompt_ids), job.rollout.cells + cells)
        return slots >= 1 and session.fits(len(job.prompt_ids), job.request.max_new_tokens + cells)

    def _start(self, session: BatchSession, job: Job) -> None:
        job.started_at = time.monotonic()
        try:
            if job.rollout is not None:
                self.rolling.append(job)
                job.rollout.start()
                return
            slot = session.add(job.prompt_ids, job.request)
        except TokentreeError as exc:
            self._fail_start(job, (400, str(exc)))
            return
        except Exception:
            log.exception("starting a generation failed")
            self._fail_start(job, INTERNAL_ERROR)
            return
        self.batched[slot] = job
        self.peak_batch = max(self.peak_batch, self.batch_size)

    def _fail_start(self, job: Job, error: tuple[int, str]) -> None:
        if job in self.rolling:
            self._end_rollout(job, ("error", error))
        else:
            job.post("error", error)

    def _advance_rollouts(self) -> None:
        """After a step: each rollout forks, prunes and finishes its branches; a finished one
        posts its tree."""
        for job in list(self.rolling):
            try:
                job.rollout.advance()
            except TokentreeError as exc:  # e.g. a branch found no room in the cache
                self._end_rollout(job, ("error", (503, f"the rollout could not go on: {exc}")))
                continue
            except Exception:
                log.exception("a rollout failed")
                self._end_rollout(job, ("error", INTERNAL_ERROR))
                continue
            if job.rollout.done:
                self._end_rollout(job, ("done", job.rollout.tree()))
        self.peak_batch = max(self.peak_batch, self.batch_size)

    def _end_rollout(self, job: Job, event: tuple[str, Any] | None) -> None:
        """Stop ``job``'s rollout (what it still decodes is dropped) and post ``event``."""
        if job not in self.rolling:
            return
        self.rolling.remove(job)
        job.rollout.cancel()
        if event is not None:
            job.post(*event)

    def _finish(self, session: BatchSession, slot: int) -> None:
        job, reason = self.batched.pop(slot), session.finish_reason(slot)
        output = session.release(slot)
        if reason != "cancelled":
            job.post("done", Result(output.text, len(output.token_ids), reason,
                                    output.stats.to_dict(), output.logprobs,
                                    output.prompt_logprobs))  # fmt: skip
