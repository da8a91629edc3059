"""One model worker thread serving jobs from a bounded queue, one at a time."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ..api import GenerationStream, Generator
from ..drafters import Drafter, make_drafter
from ..errors import TokentreeError

log = logging.getLogger("tokentree.server")


@dataclass
class Result:
    """What a finished job reports."""

    text: str
    completion_tokens: int
    finish_reason: str
    stats: dict


@dataclass
class Job:
    """One generation. Events, in order: ("text", str)*, then ("done", Result) or ("error", (status, message))."""

    prompt_ids: list[int]
    options: dict[str, Any]  # keyword arguments of Generator.stream
    drafter: str | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stream: GenerationStream | None = None

    def post(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def cancel(self) -> None:
        """Stop after the current step (or never start); safe from any thread."""
        self.cancelled.set()
        if self.stream is not None:
            self.stream.cancelled = True


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


class Worker:
    def __init__(self, generator: Generator, max_queue: int):
        self.generator = generator
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.running: Job | None = None
        self.stopping = False
        self._drafters: dict[str, Drafter] = {}  # one per name, so learned state carries across requests
        self._thread = threading.Thread(target=self._serve, name="tokentree-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self.jobs.qsize() + (self.running is not None)

    def submit(self, job: Job) -> None:
        if self.stopping:
            raise ShuttingDown()
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull() from None

    def stop(self) -> None:
        """Abort queued jobs, stop the running one after its current step, end the thread."""
        self.stopping = True
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.post("error", (503, "the server is shutting down"))
        if self.running is not None:
            self.running.cancel()
        self.jobs.put(None)
        self._thread.join(timeout=30)

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            self.running = job
            try:
                self._run(job)
            finally:
                self.running = None

    def _run(self, job: Job) -> None:
        try:
            stream = self.generator.stream(job.prompt_ids, drafter=self._drafter(job.drafter), **job.options)
            job.stream = stream
            if job.cancelled.is_set():
                stream.cancelled = True
            for piece in stream:
                job.post("text", piece)
            job.post("done", Result(stream.text, len(stream.token_ids), stream.finish_reason, stream.stats.to_dict()))
        except TokentreeError as exc:
            job.post("error", (400, str(exc)))
        except Exception as exc:  # a bug, not a user mistake: log it, answer 500, keep serving
            log.exception("generation failed")
            job.post("error", (500, f"internal error: {type(exc).__name__}: {exc}"))

    def _drafter(self, name: str | None) -> Drafter:
        if name is None:
            return self.generator.drafter
        if name not in self._drafters:
            draft = self.generator.draft
            self._drafters[name] = make_drafter(name, None if draft is None else draft.model)
        return self._drafters[name]
