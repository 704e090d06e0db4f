"""The usage journal: the durable copy of every usage record from the moment a request ends until the database
has it, so that a crash (``kill -9``, an OOM kill, a power cut) loses no record a client was answered with.

* **Durable before acknowledged.** ``append`` hands a record to a writer thread and returns its sequence
  number; ``durable(seq)`` completes once the record is on disk. The request path awaits it before it sends the
  final bytes of its answer (the usage chunk and ``[DONE]`` of a stream, the body of a non-streamed one).
* **Group commit.** The writer takes every record pending, writes them in one ``write`` and makes them durable
  with one ``fdatasync``; records that arrive meanwhile wait for the next group, so many concurrent requests
  share one sync. While other requests are running (``siblings``), the writer first gathers their records for
  at most ``GATHER_SECONDS`` (PostgreSQL's ``commit_delay``): fewer syncs under load. A request running alone
  writes and syncs its record itself instead, without the hand-over to the thread and back.
* **One journal per process.** A journal is ``journal-<id>-<segment>.jsonl`` files (one ``UsageEntry`` JSON a
  line) under the ledger directory, owned by the process holding ``journal-<id>.lock`` (an ``flock``, released
  by the kernel when the process dies). Gateways sharing a data dir never share a journal.
* **Truncated only after the database has the records.** Records are grouped into segments of
  ``SEGMENT_RECORDS``; a segment is deleted once every record in it is written to the database (``handled``,
  from the ledger writer) and the journal has moved to a later one. What a closing journal still holds (the
  database was down) stays on disk for the next start.
* **Replay.** ``orphans`` finds journals whose owner is gone (their lock is free) and the spools of older
  versions; the ledger writes their records (idempotently: a ``request_id`` already in the ledger is skipped)
  before the gateway serves, then ``Orphan.remove`` deletes them.
* **Bounded.** Records appended and not yet handled are bounded by the ledger's claims
  (``LLMAAS_LEDGER_QUEUE_CAPACITY``); a journal that cannot be written (a full disk) keeps its records in
  memory, retries, and reports itself ``failing`` so that admission refuses new requests (503) instead of
  answering requests it could not record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from gateway.accounting.records import UsageEntry

logger = logging.getLogger(__name__)

SEGMENT_RECORDS = 4096
"""Records per segment file (~1.5 MB): the granularity at which the journal is truncated."""
GATHER_SECONDS = 0.002
"""How long a group waits for the records of requests still running (only while some are)."""
_GROUP_MAX = 256
_POLL_SECONDS = 0.02
"""How soon the writer takes up a record no request waits for (that of a request its client left)."""
_RETRY_SECONDS = (0.05, 1.0)


def _segment_path(directory: Path, journal_id: str, segment: int) -> Path:
    return directory / f"journal-{journal_id}-{segment:08d}.jsonl"


def _encode(entry: UsageEntry) -> bytes:
    return (json.dumps(entry.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class Journal:
    def __init__(
        self, directory: Path, *, segment_records: int = SEGMENT_RECORDS, siblings: Callable[[], int] = lambda: 0
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.id = uuid.uuid4().hex[:12]
        self._owner = FileLock(directory / f"journal-{self.id}.lock", mode=0o600, thread_local=False)
        self._owner.acquire(timeout=0)
        self._segment_records = segment_records
        self._siblings = siblings
        self._target = 1  # pending records that wake the writer
        self._cond = threading.Condition()
        self._io = threading.Lock()  # one writer of the files at a time: the thread, or a lone request inline
        self._pending: list[tuple[int, int, UsageEntry]] = []  # (seq, segment, entry), in seq order
        self._appended = 0  # the last seq handed out
        self._durable = 0  # the last seq on disk
        self._segment = 0  # the segment new records go to
        self._segment_count = 0  # records appended to it so far
        self._durable_segment = 0  # the segment of the last record on disk
        self._open: Counter[int] = Counter()  # segment -> records in it not yet in the database
        self._segment_of: dict[int, int] = {}  # id(entry) -> its segment, until handled
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._files: dict[int, tuple[int, int]] = {}  # segment -> (fd, bytes known good)
        self._cleanup = False
        self._stopping = False
        self.failing = False
        self.commits = 0
        """Group commits so far (one ``fdatasync`` each)."""
        self._thread = threading.Thread(target=self._run, name="llmaas-journal", daemon=True)
        self._thread.start()

    # -- the request path ------------------------------------------------------------------------------------------
    def append(self, entry: UsageEntry) -> int:
        """Queue the record for the disk; returns its sequence number (for ``durable``). Never blocks."""
        with self._cond:
            if self._segment_count >= self._segment_records:
                self._segment += 1
                self._segment_count = 0
            self._segment_count += 1
            self._appended += 1
            self._pending.append((self._appended, self._segment, entry))
            self._open[self._segment] += 1
            self._segment_of[id(entry)] = self._segment
            if len(self._pending) >= self._target and self._siblings():
                self._cond.notify()  # alone, the request syncs its record itself (``durable``), or the writer's poll
            return self._appended

    async def durable(self, seq: int) -> None:
        """Return once record ``seq`` is on disk. A request running alone writes its group itself (blocking the
        event loop for one sync, which no other request is waiting on): no hand-over to the writer thread."""
        if seq <= self._durable:  # an int read: atomic, and it only grows
            return
        if not self._siblings() and self._commit_inline() and seq <= self._durable:
            return
        future = asyncio.get_running_loop().create_future()
        with self._cond:
            if seq <= self._durable:
                return
            self._waiters.append((seq, future))
        await future

    def _commit_inline(self) -> bool:
        """Write and sync what is pending, here and now, unless the writer thread is at it."""
        if not self._io.acquire(blocking=False):
            return False
        try:
            return self._commit_pending()
        finally:
            self._io.release()

    def wait_durable(self, seq: int, timeout: float = 10.0) -> bool:
        """``durable`` for a caller outside the event loop (tests, shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._durable >= seq, timeout)

    def handled(self, entries: Iterable[UsageEntry]) -> None:
        """The database has these records (or set them aside): their segments may go once complete."""
        with self._cond:
            for entry in entries:
                segment = self._segment_of.pop(id(entry), None)
                if segment is None:
                    continue
                self._open[segment] -= 1
                if self._open[segment] == 0 and segment < self._durable_segment:
                    self._cleanup = True
            if self._cleanup:
                self._cond.notify()

    @property
    def unhandled(self) -> int:
        with self._cond:
            return len(self._segment_of)

    # -- the writer thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = _RETRY_SECONDS[0]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._cleanup or self._stopping, _POLL_SECONDS)
                others = self._siblings() if self._pending and not self._stopping else 0
                if others:  # requests still running: their records will want a sync too, share this one
                    self._target = min(len(self._pending) + others, _GROUP_MAX)
                    self._cond.wait_for(lambda: len(self._pending) >= self._target or self._stopping, GATHER_SECONDS)
                    self._target = 1
                if self._stopping and not self._pending and not self._cleanup:
                    return
                cleanup, self._cleanup = self._cleanup, False
            with self._io:  # groups are taken under it, so they reach the disk in order
                if cleanup:
                    self._remove_complete_segments()
                if self._commit_pending():
                    delay = _RETRY_SECONDS[0]
                    continue
            if self._stopping:  # the rest is still on its way to the database; the closing ledger says if not
                return
            with self._cond:
                self._cond.wait(delay)  # woken early by a close
            delay = min(delay * 2, _RETRY_SECONDS[1])

    def _commit_pending(self) -> bool:
        """Write and sync the records pending (the caller holds ``_io``); False if the disk refused them, which
        are pending again, and the journal ``failing`` until a write succeeds."""
        with self._cond:
            group, self._pending = self._pending, []
        if not group:
            return True
        try:
            self._write(group)
        except OSError:
            logger.exception("the usage journal could not write %d records; retrying", len(group))
            with self._cond:
                self.failing = True
                self._pending = group + self._pending
                self._cond.notify()  # the writer thread retries them
            return False
        self._committed(group[-1][0], group[-1][1])
        return True

    def _write(self, group: list[tuple[int, int, UsageEntry]]) -> None:
        """Append the group to its segment file(s) and sync them; a failed write leaves no partial line."""
        by_segment: dict[int, list[bytes]] = {}
        for _, segment, entry in group:
            by_segment.setdefault(segment, []).append(_encode(entry))
        for segment, lines in by_segment.items():
            fd, good = self._file(segment)
            data = b"".join(lines)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fdatasync(fd)
            except OSError:
                os.ftruncate(fd, good)  # the next try writes these lines again, whole
                raise
            self._files[segment] = (fd, good + len(data))
        for segment in [s for s in self._files if s < group[-1][1]]:  # segments behind the writer: closed
            os.close(self._files.pop(segment)[0])

    def _file(self, segment: int) -> tuple[int, int]:
        if segment not in self._files:
            path = _segment_path(self.directory, self.id, segment)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)  # the new file's name is durable too, not only what it will hold
            finally:
                os.close(directory)
            self._files[segment] = (fd, os.fstat(fd).st_size)
        return self._files[segment]

    def _committed(self, seq: int, segment: int) -> None:
        with self._cond:
            self.commits += 1
            self.failing = False
            self._durable = seq
            self._durable_segment = segment
            ready = [future for wanted, future in self._waiters if wanted <= seq]
            self._waiters = [(wanted, future) for wanted, future in self._waiters if wanted > seq]
            self._cleanup = self._cleanup or any(self._open[s] == 0 for s in self._open if s < segment)
            self._cond.notify_all()
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for future in ready:
            loops.setdefault(future.get_loop(), []).append(future)
        for loop, futures in loops.items():  # one wake-up per event loop and group, not one per record
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_release, futures)

    def _remove_complete_segments(self, *, everything: bool = False) -> None:
        """Delete the segments whose records the database has all (behind the writer, or any when closing)."""
        with self._cond:
            done = [s for s, n in self._open.items() if n == 0 and (everything or s < self._durable_segment)]
            for segment in done:
                del self._open[segment]
        for segment in done:
            if segment in self._files:
                os.close(self._files.pop(segment)[0])
            _segment_path(self.directory, self.id, segment).unlink(missing_ok=True)

    # -- shutdown --------------------------------------------------------------------------------------------------
    def close(self) -> int:
        """Write what is pending, delete what the database has; returns how many records stay on disk for the
        next start (which replays them). Without any, the journal and its lock file are gone."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._remove_complete_segments(everything=True)
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()
        left = self.unhandled
        self._owner.release()
        if not left:
            Path(self._owner.lock_file).unlink(missing_ok=True)
        return left


def _release(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


@dataclass
class Orphan:
    """A journal whose process is gone (or an older version's spool), held by us while it is replayed."""

    paths: list[Path]
    lock: FileLock | None

    def lines(self) -> Iterator[str]:
        for path in self.paths:
            try:
                with path.open(encoding="utf-8") as handle:
                    yield from (line for line in handle if line.strip())
            except FileNotFoundError:  # replayed and removed by another process meanwhile
                continue

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release()
            Path(self.lock.lock_file).unlink(missing_ok=True)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def orphans(directory: Path) -> Iterator[Orphan]:
    """The journals in ``directory`` that no live process owns, each locked while the caller replays it, and the
    spools an older version left at shutdown."""
    journal_ids = {path.name.split("-")[1] for path in directory.glob("journal-*-*.jsonl")}
    journal_ids |= {path.name[len("journal-") : -len(".lock")] for path in directory.glob("journal-*.lock")}
    for journal_id in sorted(journal_ids):
        lock = FileLock(directory / f"journal-{journal_id}.lock", mode=0o600, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # its gateway is alive (this one included)
            continue
        yield Orphan(sorted(directory.glob(f"journal-{journal_id}-*.jsonl")), lock)
    for path in sorted(directory.glob("spool-*.jsonl")):
        yield Orphan([path], None)
