"""What the drafters learned, kept on disk while the server runs (``--drafter-state``).

The file is loaded at start (``tokentree.load``), written every ``--save-every`` seconds and once
more at a clean shutdown (SIGINT or SIGTERM). A snapshot is taken by the worker between two steps
(the drafters' tables hold still then, and taking it costs a step no more than building lists);
compressing and writing happen on this keeper's own thread, so decoding never waits on the disk.
Writes are atomic: a crash leaves the previous file, and loses at most one period of learning.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..api import Generator
from ..drafters.state import require_stateful, state_document, write_state
from ..errors import TokentreeError
from ..files import check_writable, temp_files_of
from .worker import ShuttingDown, Worker

log = logging.getLogger("tokentree.server")
SNAPSHOT_TIMEOUT = 60.0  # seconds a periodic save waits for the worker to reach a step boundary


def prepare_state_file(path: str | Path) -> None:
    """Before anything loads: a clear error unless the state file can be written where asked,
    and the temporary files an interrupted save left beside it removed."""
    reason = check_writable(path)
    if reason is not None:
        raise TokentreeError(f"--drafter-state {path}: {reason}")
    for stale in temp_files_of(path):
        stale.unlink(missing_ok=True)


class StateKeeper:
    """Saves ``generator``'s default drafter to ``path`` every ``every`` seconds (0: only at
    shutdown) through ``worker``, and at :meth:`stop`."""

    def __init__(self, generator: Generator, worker: Worker, path: str | Path, every: float):
        require_stateful(generator.drafter)
        self.generator, self.worker, self.path, self.every = generator, worker, Path(path), every
        self.saves = 0  # completed writes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tokentree-state", daemon=True)

    def start(self) -> None:
        if self.every > 0:
            self._thread.start()

    def stop(self) -> None:
        """End the periodic saves and write the state once more (call after the worker stopped:
        nothing learns any more)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=SNAPSHOT_TIMEOUT)
        self._write(self._document())

    def _document(self) -> dict:
        return state_document(self.generator.drafter, self.generator.vocab_signature)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                snapshot = self.worker.between_steps(self._document)
                self._write(snapshot.result(timeout=SNAPSHOT_TIMEOUT))
            except ShuttingDown:
                return
            except Exception:  # noqa: BLE001 - a failed save must not end the server; retry later
                log.exception("saving the drafter state to %s failed", self.path)

    def _write(self, document: dict) -> None:
        write_state(document, self.path)
        self.saves += 1
