"""The usage journal: the durable copy of every usage record from the moment a request ends until the database
has it, so that a crash (``kill -9``, an OOM kill, a power cut) loses no record a client was answered with.

* **Durable before acknowledged.** ``append`` hands a record to a writer thread and returns its sequence
  number; ``durable(seq)`` completes once the record is on disk. The request path awaits it before it sends the
  final bytes of its answer (the usage chunk and ``[DONE]`` of a stream, the body of a non-streamed one).
* **Interim records.** A stream also journals, before each batch of tokens goes out, what it would be charged
  if it were cut there (``append(..., interim=True)``: its prompt and the tokens sent so far, as our failure).
  An interim record is never written to the database by a live gateway; it is superseded by the stream's next
  one or its final record, and only a journal replayed after a crash turns the last one of a stream that has
  no final record into its ledger record. So a stream cut by a ``kill -9`` is billed what reached its client.
* **Group commit.** The writer takes every record pending, writes them in one ``write`` and makes them durable
  with one ``fdatasync``; records that arrive meanwhile wait for the next group, so many concurrent requests
  share one sync. While other requests are running (``siblings``), the writer first gathers their records for
  at most ``GATHER_SECONDS`` (PostgreSQL's ``commit_delay``): fewer syncs under load. A request running alone
  writes and syncs its record itself instead, without the hand-over to the thread and back.
* **One journal per process.** A journal is ``journal-<id>-<segment>.jsonl`` files (one ``UsageEntry`` JSON a
  line, preallocated: ``journal_files``) under the ledger directory, owned by the process holding
  ``journal-<id>.lock`` (an ``flock``, released by the kernel when the process dies). Gateways sharing a data
  dir never share a journal.
* **Truncated only after the database has the records.** Records are grouped into segments of
  ``SEGMENT_RECORDS``; a segment is deleted once every final record in it is written to the database
  (``handled``, from the ledger writer), every interim record in it is superseded, and the journal has moved
  to a later one. What a closing journal still holds (the database was down) stays on disk for the next start.
* **Replay.** ``journal_files.orphans`` finds journals whose owner is gone; the ledger writes their records
  (``replayable``; idempotently: a ``request_id`` already in the ledger is skipped) before the gateway serves.
* **Bounded.** Final records appended and not yet handled are bounded by the ledger's claims
  (``LLMAAS_LEDGER_QUEUE_CAPACITY``), interim ones by the streams running (one each); a journal that cannot
  be written (a full disk) keeps its records in memory, retries, and reports itself ``failing`` so that
  admission refuses new requests (503) instead of answering requests it could not record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from gateway.accounting.journal_files import SegmentFile, owner_lock, segment_path
from gateway.accounting.records import UsageEntry

logger = logging.getLogger(__name__)

SEGMENT_RECORDS = 4096
"""Records per segment file: the granularity at which the journal is truncated."""
SEGMENT_BYTES_PER_RECORD = 512
"""Preallocated room per record (a record is ~300-400 bytes): a segment is 2 MiB."""
GATHER_SECONDS = 0.002
"""How long a group waits for the records of requests still running (only while some are)."""
_GROUP_MAX = 256
_POLL_SECONDS = 0.02
"""How soon the writer takes up a record no request waits for (that of a request its client left)."""
_RETRY_SECONDS = (0.05, 1.0)


class _Pending(NamedTuple):
    seq: int
    segment: int
    entry: UsageEntry
    interim: bool


def encode(entry: UsageEntry, *, interim: bool = False) -> bytes:
    values = entry.to_json()
    if interim:
        values["interim"] = True
    return (json.dumps(values, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def replayable(lines: Iterable[str]) -> Iterable[UsageEntry | ValueError]:
    """The ledger records a journal's lines stand for, in order: every final record, and the last interim
    record of each request that has no final one (a stream cut by the crash). A line that is not a record
    comes as a ``ValueError`` in its place."""
    chosen: dict[str, UsageEntry] = {}
    final: set[str] = set()
    errors: list[ValueError] = []
    for number, line in enumerate(lines, start=1):
        try:
            values = json.loads(line)
            interim = bool(values.pop("interim", False))
            entry = UsageEntry.from_json(values)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            errors.append(ValueError(f"line {number} is not a usage record ({exc}): {line[:2000]}"))
            continue
        if interim and entry.request_id in final:
            continue
        if not interim:
            final.add(entry.request_id)
        chosen.pop(entry.request_id, None)  # a later record of the request supersedes its earlier ones
        chosen[entry.request_id] = entry
    yield from errors
    yield from chosen.values()


class Journal:
    def __init__(
        self, directory: Path, *, segment_records: int = SEGMENT_RECORDS, siblings: Callable[[], int] = lambda: 0
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.id = uuid.uuid4().hex[:12]
        self._owner = owner_lock(directory, self.id)
        self._owner.acquire(timeout=0)
        self._segment_records = segment_records
        self._siblings = siblings
        self._target = 1  # pending records that wake the writer
        lock = threading.Lock()  # the journal's state; two conditions on it, so that a sync wakes no writer thread
        self._cond = threading.Condition(lock)  # work for the writer thread: records pending, cleanup, a close
        self._synced = threading.Condition(lock)  # records made durable (``wait_durable``)
        self._io = threading.Lock()  # one writer of the files at a time: the thread, or a lone request inline
        self._pending: list[_Pending] = []  # in seq order
        self._appended = 0  # the last seq handed out
        self._durable = 0  # the last seq on disk
        self._segment = 0  # the segment new records go to
        self._segment_count = 0  # records appended to it so far
        self._durable_segment = 0  # the segment of the last record on disk
        self._open: Counter[int] = Counter()  # segment -> records in it the journal must keep
        self._segment_of: dict[int, int] = {}  # id(final entry) -> its segment, until the database has it
        self._interim_of: dict[str, int] = {}  # request id -> segment of its last durable interim record
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._files: dict[int, SegmentFile] = {0: self._create(0)}  # the segments being written
        self._ready: dict[int, SegmentFile] = {}  # the next segment, created ahead by the writer thread
        self._cleanup = False
        self._stopping = False
        self.failing = False
        self.commits = 0
        """Group commits so far (one ``fdatasync`` each)."""
        self._thread = threading.Thread(target=self._run, name="llmaas-journal", daemon=True)
        self._thread.start()

    # -- the request path ------------------------------------------------------------------------------------------
    def append(self, entry: UsageEntry, *, interim: bool = False) -> int:
        """Queue the record for the disk; returns its sequence number (for ``durable``). Never blocks. An interim
        record stands for its request until the next record of that request is durable."""
        with self._cond:
            if self._segment_count >= self._segment_records:
                self._segment += 1
                self._segment_count = 0
            self._segment_count += 1
            self._appended += 1
            self._pending.append(_Pending(self._appended, self._segment, entry, interim))
            self._open[self._segment] += 1
            if not interim:
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
        with self._synced:
            return self._synced.wait_for(lambda: self._durable >= seq, timeout)

    def handled(self, entries: Iterable[UsageEntry]) -> None:
        """The database has these records (or set them aside): their segments may go once complete."""
        with self._cond:
            for entry in entries:
                segment = self._segment_of.pop(id(entry), None)
                if segment is not None:
                    self._release(segment)
            if self._cleanup:
                self._cond.notify()

    def _release(self, segment: int) -> None:
        """One record of ``segment`` is no longer needed (the caller holds ``_cond``)."""
        self._open[segment] -= 1
        if self._open[segment] == 0 and segment < self._durable_segment:
            self._cleanup = True

    @property
    def unhandled(self) -> int:
        """Records the journal must keep: final ones the database does not have, interim ones not superseded."""
        with self._cond:
            return len(self._segment_of) + len(self._interim_of)

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
                upcoming = self._segment + 1
            with self._io:  # groups are taken under it, so they reach the disk in order
                if cleanup:
                    self._remove_complete_segments()
                if self._commit_pending():
                    delay = _RETRY_SECONDS[0]
                    self._prepare(upcoming)
                    continue
            if self._stopping:  # the rest is still on its way to the database; the closing ledger says if not
                return
            with self._cond:
                self._cond.wait(delay)  # woken early by a close
            delay = min(delay * 2, _RETRY_SECONDS[1])

    def _prepare(self, segment: int) -> None:
        """Create the next segment ahead of time (off the request path), unless it exists."""
        with self._cond:
            if segment in self._ready or segment in self._files or self._stopping:
                return
        try:
            created = self._create(segment)
        except OSError:
            logger.warning("the usage journal could not create segment %d ahead of time", segment, exc_info=True)
            return
        with self._cond:
            self._ready[segment] = created

    def _create(self, segment: int) -> SegmentFile:
        path = segment_path(self.directory, self.id, segment)
        return SegmentFile(path, self._segment_records * SEGMENT_BYTES_PER_RECORD)

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
        self._committed(group)
        return True

    def _write(self, group: list[_Pending]) -> None:
        """Write the group into its segment file(s) and sync them; a failed write is written again whole."""
        by_segment: dict[int, list[bytes]] = {}
        for pending in group:
            by_segment.setdefault(pending.segment, []).append(encode(pending.entry, interim=pending.interim))
        for segment, lines in by_segment.items():
            self._file(segment).write(b"".join(lines))
        for segment in [s for s in self._files if s < group[-1].segment]:  # segments behind the writer: closed
            self._files.pop(segment).close()

    def _file(self, segment: int) -> SegmentFile:
        if segment not in self._files:
            with self._cond:
                ready = self._ready.pop(segment, None)
            self._files[segment] = ready or self._create(segment)
        return self._files[segment]

    def _committed(self, group: list[_Pending]) -> None:
        last = group[-1]
        with self._cond:
            self.commits += 1
            self.failing = False
            self._durable = last.seq
            self._durable_segment = last.segment
            for pending in group:  # the request's earlier interim record is superseded, now that this one is durable
                previous = self._interim_of.pop(pending.entry.request_id, None)
                if previous is not None:
                    self._release(previous)
                if pending.interim:
                    self._interim_of[pending.entry.request_id] = pending.segment
            ready = [future for wanted, future in self._waiters if wanted <= last.seq]
            self._waiters = [(wanted, future) for wanted, future in self._waiters if wanted > last.seq]
            if any(self._open[s] == 0 for s in self._open if s < last.segment):
                self._cleanup = True
                self._cond.notify()
            self._synced.notify_all()  # not the writer thread: a commit inline must not wake it for nothing
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for future in ready:
            loops.setdefault(future.get_loop(), []).append(future)
        for loop, futures in loops.items():  # one wake-up per event loop and group, not one per record
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, futures)

    def _remove_complete_segments(self, *, everything: bool = False) -> None:
        """Delete the segments whose records the journal need not keep (behind the writer, or any when closing)."""
        with self._cond:
            done = [s for s, n in self._open.items() if n == 0 and (everything or s < self._durable_segment)]
            for segment in done:
                del self._open[segment]
        for segment in done:
            if segment in self._files:
                self._files.pop(segment).close()
            segment_path(self.directory, self.id, segment).unlink(missing_ok=True)

    # -- shutdown --------------------------------------------------------------------------------------------------
    def close(self) -> int:
        """Write what is pending, delete what the database has; returns how many records stay on disk for the
        next start (which replays them). Without any, the journal and its lock file are gone."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._remove_complete_segments(everything=True)
        unused = [s for s in [*self._files, *self._ready] if s not in self._open]  # never written, or emptied
        for segment_file in [*self._files.values(), *self._ready.values()]:
            segment_file.close()
        for segment in unused:
            segment_path(self.directory, self.id, segment).unlink(missing_ok=True)
        self._files.clear()
        self._ready.clear()
        left = self.unhandled
        self._owner.release()
        if not left:
            Path(self._owner.lock_file).unlink(missing_ok=True)
        return left


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
