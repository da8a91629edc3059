"""Drafter knowledge shared between replicas: each replica publishes what its drafters learned
(:class:`~tokentree.drafters.base.SharingDrafter`'s bounded deltas) to one store, every
``share_every`` seconds and at shutdown, and merges the others' between two of its steps. Drafts
are verified, so this changes only speed, never output.

A replica that starts late replays the deltas the store still keeps (the latest ``keep``); what is
older than those is lost to it. The store also keeps each replica's latest metrics, so the
ingress can answer ``/metrics`` for the whole deployment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from ..drafters.base import SharingDrafter

log = logging.getLogger("tokentree.cluster")
KEEP_DELTAS = 256  # deltas the store keeps for replicas that start late
METRICS_STALE_S = 120.0  # a replica silent this long (gone) leaves the deployment's metrics


def is_empty(delta: Any) -> bool:
    """Whether a delta carries nothing: its lists of entries are empty (a hybrid's: its sources'
    deltas, each a dict or None, are all empty; its source names do not count)."""
    if delta is None:
        return True
    if isinstance(delta, dict):
        return all(is_empty(v) for k, v in delta.items() if k != "sources")
    if all(v is None or isinstance(v, dict) for v in delta):
        return all(is_empty(v) for v in delta)
    return False  # a list of entries


class KnowledgeStore:
    """The deltas replicas published (the latest ``keep``, numbered) and their latest metrics.
    Run as one Ray actor per deployment."""

    def __init__(self, keep: int = KEEP_DELTAS):
        self.deltas: deque[tuple[int, str, dict]] = deque(maxlen=keep)
        self.serial = 0
        self.metrics: dict[str, tuple[float, str]] = {}

    def publish(self, replica: str, delta: dict) -> int:
        self.serial += 1
        self.deltas.append((self.serial, replica, delta))
        return self.serial

    def since(self, serial: int, replica: str) -> tuple[int, list[dict]]:
        """The deltas after ``serial`` that other replicas published, and the latest serial."""
        return self.serial, [d for s, r, d in self.deltas if s > serial and r != replica]

    def report(self, replica: str, metrics_text: str) -> None:
        self.metrics[replica] = (time.time(), metrics_text)

    def all_metrics(self) -> dict[str, str]:
        """Each live replica's latest metrics text."""
        now = time.time()
        return {r: text for r, (at, text) in self.metrics.items() if now - at < METRICS_STALE_S}


class KnowledgeSharer:
    """A replica's side: a thread that every ``every`` seconds publishes its drafter's delta,
    merges the others' and reports its metrics. ``between_steps`` runs a function on the model's
    worker thread between two steps and returns a future (the server worker's)."""

    def __init__(self, drafter, between_steps: Callable, store, replica: str, every: float,
                 metrics: Callable[[], str]):  # fmt: skip
        self.drafter = drafter if isinstance(drafter, SharingDrafter) else None
        self.between_steps, self.store, self.replica = between_steps, store, replica
        self.every, self.metrics, self.cursor = every, metrics, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tokentree-knowledge", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop the loop and publish what is still being learned."""
        self.stopped.set()
        self.thread.join(timeout=30)
        if self.drafter is not None:
            self._publish(final=True)

    def _loop(self) -> None:
        while True:  # a round at once: a late replica catches up before its first period ends
            try:
                self.exchange()
            except Exception:  # noqa: BLE001 - sharing only changes speed: log, keep serving
                log.exception("drafter knowledge exchange failed")
            if self.stopped.wait(self.every):
                return

    def exchange(self) -> int:
        """One round: publish, merge the others' deltas, report metrics; the deltas merged."""
        import ray

        merged = 0
        if self.drafter is not None:
            self._publish(final=False)
            self.cursor, deltas = ray.get(self.store.since.remote(self.cursor, self.replica))
            for delta in deltas:
                self._on_worker(lambda d=delta: self.drafter.absorb_knowledge(d))
            merged = len(deltas)
        self.store.report.remote(self.replica, self.metrics())
        return merged

    def _publish(self, final: bool) -> None:
        import ray

        delta = self._on_worker(lambda: self.drafter.knowledge_delta(final))
        if not is_empty(delta):
            ray.get(self.store.publish.remote(self.replica, delta))

    def _on_worker(self, fn: Callable):
        return self.between_steps(fn).result(timeout=60)
