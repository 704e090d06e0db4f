"""The usage ledger writer: records are queued on the request path (no I/O there) and written in batches
by a background thread every ``flush_interval`` seconds (≤ 1 s). ``close()`` writes everything still
queued, so a graceful shutdown loses nothing; a ``kill -9`` loses at most the last interval. A failed
write is retried with the same batch: records are never dropped."""

from __future__ import annotations

import logging
import queue
import threading
import time

from gateway.tenancy.service import TenancyService, UsageEntry

logger = logging.getLogger(__name__)


class Meter:
    def __init__(self, service: TenancyService, flush_interval: float = 0.5) -> None:
        self._service = service
        self._interval = flush_interval
        self._queue: queue.SimpleQueue[UsageEntry] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="llmaas-meter", daemon=True)
        self._thread.start()

    def record(self, entry: UsageEntry) -> None:
        with self._flushed:
            self._pending += 1
        self._queue.put(entry)

    def _drain(self) -> list[UsageEntry]:
        batch: list[UsageEntry] = []
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _write(self, batch: list[UsageEntry]) -> None:
        while True:
            try:
                self._service.record_usage(batch)
                break
            except Exception:
                logger.exception("writing %d usage records failed; retrying", len(batch))
                time.sleep(min(self._interval, 0.5))
        with self._flushed:
            self._pending -= len(batch)
            self._flushed.notify_all()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            batch = self._drain()
            if batch:
                self._write(batch)
        batch = self._drain()
        if batch:
            self._write(batch)

    def wait_flushed(self, timeout: float = 10.0) -> bool:
        """Block until every record queued so far is in the database (used by tests and shutdown)."""
        with self._flushed:
            return self._flushed.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
