"""The ledger writer: usage records are queued on the request path (no database I/O there) and written in
batches by a background thread every ``flush_interval`` seconds (at most 1 s). It never stops and never loses a
record:

* **Durable first.** Each record is also appended to this process's journal (``journal``), which makes it
  durable in group commits before the request's answer is finished (``durable``; ``in_flight``, the requests
  still running, tells it when waiting for more records is worth it); a record leaves the journal only once the
  database has it. A ``kill -9`` loses no record a client was answered with.
* **Room first.** Admission claims room for the record a request will leave (``claim``); when the records
  admitted but not yet written reach ``capacity``, or the journal cannot be written, new requests are refused
  with a 503 before they start, so a record never has to be dropped.
* **Bad rows are set aside.** A batch the database refuses is split in halves until the refused rows are
  alone; each is appended to ``dead-letter.jsonl`` in the ledger dir, counted in a metric and logged, and the
  rest are written. A database that is unreachable is retried with backoff, nothing split.
* **Writes are idempotent.** Each record's ``request_id`` is unique in the ledger, so a batch retried after an
  unclear failure, or a journal replayed, is counted once.
* **Shutdown** writes what is queued for at most ``shutdown_seconds``; what is still unwritten then stays in
  the journal, and the next start writes it (``replay``), as it does the journals of processes that died.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from gateway.accounting.journal import Journal, replayable
from gateway.accounting.journal_files import orphans
from gateway.accounting.records import UsageEntry
from gateway.errors import ServiceUnavailable
from gateway.private_files import open_private, private_dir

logger = logging.getLogger(__name__)

BATCH_LIMIT = 1000
_MAX_BACKOFF_SECONDS = 5.0

Write = Callable[[list[UsageEntry]], None]


def _unreachable(exc: Exception) -> bool:
    """The database itself failed (down, connection lost, locked), not the rows."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class LedgerFull(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "The server is writing usage records slower than they arrive; retry shortly.",
            code="ledger_backlog",
            headers={"retry-after": "1"},
        )


class JournalFailing(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "The server cannot record usage durably right now; retry shortly.",
            code="ledger_unavailable",
            headers={"retry-after": "1"},
        )


class LedgerWriter:
    def __init__(
        self,
        write: Write,
        directory: Path,
        *,
        flush_interval: float = 0.5,
        capacity: int = 10_000,
        shutdown_seconds: float = 10.0,
        on_dead_letter: Callable[[int], None] = lambda _: None,
        in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        self._write_batch = write
        self._dir = directory
        self._interval = flush_interval
        self._capacity = capacity
        self._shutdown_seconds = shutdown_seconds
        self._on_dead_letter = on_dead_letter
        self._queue: deque[UsageEntry] = deque()
        self._retry: list[UsageEntry] = []
        self._claimed = 0  # admitted requests whose record is not written yet (queued ones included)
        self._writing = False
        self._lock = threading.Condition()
        self._stop = threading.Event()
        private_dir(directory)
        self._journal = Journal(directory, siblings=in_flight)
        self._thread = threading.Thread(target=self._run, name="llmaas-ledger", daemon=True)
        self._thread.start()

    # -- the request path ----------------------------------------------------------------------------------------
    def claim(self) -> None:
        """Room for one future record, or ``LedgerFull`` (a 503) when the backlog is at capacity."""
        if self._journal.failing:
            raise JournalFailing()
        with self._lock:
            if self._claimed >= self._capacity:
                raise LedgerFull()
            self._claimed += 1

    def unclaim(self) -> None:
        """Give back a claim whose request was refused before it ran (it leaves no record)."""
        with self._lock:
            self._claimed -= 1
            self._lock.notify_all()

    def record(self, entry: UsageEntry) -> int:
        """Queue the record of a claimed request, for the journal and the database; never blocks, never drops.
        Returns its number in the journal, for ``durable``."""
        seq = self._journal.append(entry)  # first: the database must never have a record the journal does not know
        with self._lock:
            self._queue.append(entry)
        return seq

    def record_interim(self, entry: UsageEntry) -> int:
        """Journal what a running stream would be charged if it were cut now (never written to the database by
        this process: only a replay after a crash writes the last one of a stream that has no final record).
        Returns its number in the journal, for ``durable``."""
        return self._journal.append(entry, interim=True)

    async def durable(self, seq: int) -> None:
        """Return once the record numbered ``seq`` is durable (in the journal, on disk)."""
        await self._journal.durable(seq)

    @property
    def journal(self) -> Journal:
        return self._journal

    @property
    def backlog(self) -> int:
        with self._lock:
            return self._claimed

    def wait_flushed(self, timeout: float = 10.0) -> bool:
        """Block until every record queued so far is written (tests)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._queue and not self._retry and not self._writing, timeout)

    # -- the writer thread ---------------------------------------------------------------------------------------
    def _take(self) -> list[UsageEntry]:
        with self._lock:
            batch = self._retry + [self._queue.popleft() for _ in range(min(len(self._queue), BATCH_LIMIT))]
            self._retry = []
            self._writing = bool(batch)
            return batch

    def _done(self, batch: list[UsageEntry], retry: list[UsageEntry]) -> None:
        """The batch is written (or set aside) but for ``retry``: its records may leave the journal."""
        kept = {id(entry) for entry in retry}
        self._journal.handled(entry for entry in batch if id(entry) not in kept)
        with self._lock:
            self._claimed -= len(batch) - len(retry)
            self._retry = retry
            self._writing = False
            self._lock.notify_all()

    def _run(self) -> None:
        wait = self._interval
        while not self._stop.wait(wait):
            batch = self._take()
            try:
                retry = self._write_or_split(batch)
            except Exception:  # e.g. the dead-letter file cannot be written: keep everything, try again
                logger.exception("writing %d usage records failed; retrying", len(batch))
                retry = batch
            self._done(batch, retry)
            if retry:
                wait = min(max(wait, self._interval) * 2, _MAX_BACKOFF_SECONDS)
            else:  # more than a batch queued: write on without waiting
                wait = 0 if len(batch) == BATCH_LIMIT else self._interval

    def _write_or_split(self, batch: list[UsageEntry]) -> list[UsageEntry]:
        """Write the batch; returns what must be retried later (the database was unreachable)."""
        if not batch:
            return []
        try:
            self._write_batch(batch)
            return []
        except Exception as exc:
            if _unreachable(exc):
                logger.warning("the ledger's database is unreachable (%s); %d records wait", exc, len(batch))
                return batch
            if len(batch) == 1:
                self._dead_letter(batch[0], exc)
                return []
        middle = len(batch) // 2
        return self._write_or_split(batch[:middle]) + self._write_or_split(batch[middle:])

    def _dead_letter(self, entry: UsageEntry, exc: Exception) -> None:
        reason = str(exc).splitlines()[0][:500]
        logger.error("usage record %s refused by the database, set aside: %s", entry.request_id, reason)
        _append_jsonl(self._dir / "dead-letter.jsonl", [{"entry": entry.to_json(), "error": reason}])
        self._on_dead_letter(1)

    # -- start and shutdown --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the thread and write what is queued within the deadline; the rest stays in the journal."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + self._shutdown_seconds
        while time.monotonic() < deadline:
            batch = self._take()
            if not batch:
                break
            try:
                retry = self._write_or_split(batch)
            except Exception:  # what could not be written or set aside stays in the journal
                logger.exception("writing %d usage records at shutdown failed", len(batch))
                retry = batch
            self._done(batch, retry)
            if retry:
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        left = self._journal.close()
        if left:
            logger.error(
                "the ledger's database did not take %d usage records in time; they stay in the journal in %s for "
                "the next start",
                left,
                self._dir,
            )

    def replay(self) -> int:
        """Write the records of journals whose process is gone (and of older versions' spools), skipping any
        already written, then delete them; returns how many records they held."""
        replayed = 0
        for orphan in orphans(self._dir):
            entries = []
            for record in replayable(orphan.lines()):
                if isinstance(record, UsageEntry):
                    entries.append(record)
                    continue
                logger.error("a journal line is not a usage record; set aside: %s", str(record)[:300])
                _append_jsonl(self._dir / "dead-letter.jsonl", [{"spooled": str(record), "error": "not a record"}])
            for start in range(0, len(entries), BATCH_LIMIT):
                if self._write_or_split(entries[start : start + BATCH_LIMIT]):
                    orphan.release()
                    raise RuntimeError(f"the database is unreachable; {orphan.paths} are kept for the next start")
            orphan.remove()
            replayed += len(entries)
            if entries:
                logger.info("replayed %d usage records from %d journal file(s)", len(entries), len(orphan.paths))
        return replayed


def _append_jsonl(path: Path, items: list[dict[str, object]]) -> None:
    with os.fdopen(open_private(path, "ab"), "a", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
