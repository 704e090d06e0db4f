"""The usage journal on its own and under the ledger writer, on both databases: records are durable before
``durable`` returns, concurrent records share fsyncs (group commit), the journal is truncated only once the
database has its records, every process has its own journal, and the journals of dead processes are replayed
exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.accounting.journal import SEGMENT_BYTES_PER_RECORD, Journal, encode, replayable
from gateway.accounting.journal_files import orphans, read_lines
from gateway.accounting.ledger import JournalFailing, LedgerWriter
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.db import Database, UsageRecord
from tests.support import REPO
from tests.test_ledger import Unreachable, entry, rows, write_all


def journal_lines(directory: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in sorted(directory.glob("journal-*.jsonl")) for line in read_lines(path)]


def written_segments(directory: Path) -> list[str]:
    """The names of the journal's segment files that hold records (the next one is created ahead, empty)."""
    return sorted(path.name for path in directory.glob("journal-*.jsonl") if read_lines(path))


def test_a_record_is_on_disk_when_durable_returns(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = entry()

    async def append_and_wait() -> list[dict[str, object]]:
        await journal.durable(journal.append(record))
        return journal_lines(tmp_path)  # read at once: nothing is buffered in the process any more

    assert [line["request_id"] for line in asyncio.run(append_and_wait())] == [record.request_id]
    assert journal.close() == 1  # never handled by a database: stays for the next start
    assert len(list(orphans(tmp_path))) == 1


def test_concurrent_records_share_fsyncs(tmp_path: Path) -> None:
    journal = Journal(tmp_path)

    async def burst() -> None:
        await asyncio.gather(*(journal.durable(journal.append(entry())) for _ in range(500)))

    asyncio.run(burst())
    assert len(journal_lines(tmp_path)) == 500
    assert journal.commits < 100, journal.commits  # one fdatasync per group, not per record
    journal.close()


def test_segments_go_only_once_the_database_has_every_record_in_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_records=4)
    entries = [entry() for _ in range(10)]  # segments 0, 1 (4 each) and 2 (2)
    seqs = [journal.append(item) for item in entries]
    assert journal.wait_durable(seqs[-1])
    assert len(written_segments(tmp_path)) == 3
    journal.handled(entries[:7])  # segment 0 complete, segment 1 not
    journal.append(entry())  # the writer runs again: it removes what is complete
    assert journal.wait_durable(seqs[-1] + 1)
    names = [name.rsplit("-", 1)[1] for name in written_segments(tmp_path)]
    assert names == ["00000001.jsonl", "00000002.jsonl"]
    assert journal.close() == 4  # entries[7:] and the last one
    assert len(journal_lines(tmp_path)) == 7  # segments 1 and 2, kept whole


def test_an_unreachable_database_keeps_records_in_the_journal_until_it_takes_them(
    database: Database, tmp_path: Path
) -> None:
    write = Unreachable(UsageLedger(database).write)
    writer = LedgerWriter(write, tmp_path, flush_interval=0.05)
    entries = [entry() for _ in range(6)]
    write_all(writer, entries)
    assert writer.journal.wait_durable(6)
    assert {line["request_id"] for line in journal_lines(tmp_path)} == {item.request_id for item in entries}
    write.up.set()
    assert writer.wait_flushed(timeout=15)
    assert writer.journal.unhandled == 0
    writer.close()
    assert list(tmp_path.glob("journal-*")) == []  # all in the database: nothing left, not even the lock file
    assert rows(database) == 6


def test_every_process_has_its_own_journal_and_a_live_one_is_never_replayed(tmp_path: Path) -> None:
    first, second = Journal(tmp_path), Journal(tmp_path)
    assert first.id != second.id
    first.wait_durable(first.append(entry()))
    second.wait_durable(second.append(entry()))
    assert len(written_segments(tmp_path)) == 2
    assert list(orphans(tmp_path)) == []  # both owners are alive
    first.close()
    found = list(orphans(tmp_path))
    assert [orphan.paths[0].name.split("-")[1] for orphan in found] == [first.id]
    for orphan in found:
        orphan.release()
    second.close()


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from gateway.accounting.ledger import LedgerWriter
from tests.test_ledger import entry
writer = LedgerWriter(lambda entries: None, Path(sys.argv[1]), flush_interval=3600)  # never reaches a database
for _ in range(5):
    writer.claim()
    seq = writer.record(entry())
writer.journal.wait_durable(seq)
print(writer.journal.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_journal_of_a_killed_process_is_replayed_once_by_the_next(database: Database, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    killed_id = done.stdout.strip()
    assert len(journal_lines(tmp_path)) == 5
    restarted = [LedgerWriter(UsageLedger(database).write, tmp_path) for _ in range(2)]
    replayed = [0, 0]

    def replay(i: int) -> None:
        replayed[i] = restarted[i].replay()

    threads = [threading.Thread(target=replay, args=(i,)) for i in range(2)]  # two gateways start together
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(replayed) in ([0, 5], [5, 5])  # one took it over (or both, one after the other: idempotent)
    assert rows(database) == 5
    assert not list(tmp_path.glob(f"journal-{killed_id}*"))
    for writer in restarted:
        writer.close()
    assert rows(database) == 5


def test_a_journal_that_cannot_be_written_refuses_new_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = LedgerWriter(lambda entries: None, tmp_path, flush_interval=0.05)
    failing = threading.Event()
    failing.set()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if failing.is_set():
            raise OSError(28, "No space left on device")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    writer.claim()
    seq = writer.record(entry())
    assert not writer.journal.wait_durable(seq, timeout=0.5)
    with pytest.raises(JournalFailing) as refused:
        writer.claim()
    assert refused.value.status_code == 503
    failing.clear()  # the disk has room again: the record is written once, whole
    assert writer.journal.wait_durable(seq, timeout=5)
    writer.claim()
    writer.unclaim()
    assert len(journal_lines(tmp_path)) == 1
    writer.close()


def test_a_streams_interim_records_stand_for_it_until_superseded_and_a_cut_stream_is_replayed_as_sent(
    database: Database, tmp_path: Path
) -> None:
    journal = Journal(tmp_path, segment_records=4)
    finished, cut = f"req_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}"

    def interim(request_id: str, sent: int) -> UsageEntry:
        return entry(request_id=request_id, outcome="failed", completion_tokens=sent)

    for sent in range(1, 4):  # each batch durable before it goes out, one after the other
        for request_id in (finished, cut):
            assert journal.wait_durable(journal.append(interim(request_id, sent), interim=True))
    final = entry(request_id=finished, completion_tokens=3)
    last = journal.append(final)
    assert journal.wait_durable(last)
    assert journal.unhandled == 2  # the finished stream's final record, the cut one's last interim record
    journal.handled([final])
    journal.append(entry())  # the writer runs again: it removes the segments nothing stands for any more
    assert journal.wait_durable(last + 1)
    # 8 records, 4 a segment: the first segment held only superseded interim records, and went
    assert [name.rsplit("-", 1)[1] for name in written_segments(tmp_path)] == ["00000001.jsonl"]
    assert journal.close() == 2  # the cut stream's last interim record and the last final one
    writer = LedgerWriter(UsageLedger(database).write, tmp_path)
    assert writer.replay() == 3  # what the kept segment holds: the two final records, the cut stream's last interim
    writer.close()
    with database.sessions() as session:
        billed = {row.request_id: (row.outcome, row.completion_tokens) for row in session.scalars(select(UsageRecord))}
    assert billed[finished] == ("completed", 3)  # its final record, never one of its interim ones
    assert billed[cut] == ("failed", 3)
    assert len(billed) == 3


def test_replay_prefers_a_final_record_and_ignores_a_record_cut_while_it_was_written(tmp_path: Path) -> None:
    request_id = f"req_{uuid.uuid4().hex}"
    lines = [
        encode(entry(request_id=request_id, outcome="failed", completion_tokens=1), interim=True),
        encode(entry(request_id=request_id, completion_tokens=2)),
        encode(entry(request_id=request_id, outcome="failed", completion_tokens=2), interim=True),  # cannot follow
    ]
    torn = encode(entry())[:50]
    path = tmp_path / "journal-0123456789ab-00000000.jsonl"
    path.write_bytes(b"".join(lines) + torn + bytes(4096))  # a preallocated segment, cut mid-record by a crash
    records = list(replayable(read_lines(path)))
    assert [(r.request_id, r.outcome, r.completion_tokens) for r in records] == [(request_id, "completed", 2)]


def test_segments_are_written_in_place_over_preallocated_zeros(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_records=8)
    first = next(iter(tmp_path.glob("journal-*.jsonl")))
    size = first.stat().st_size
    assert size == 8 * SEGMENT_BYTES_PER_RECORD and first.read_bytes() == bytes(size)
    for _ in range(3):
        assert journal.wait_durable(journal.append(entry()))
    assert first.stat().st_size == size  # no file growth to make durable on each sync
    assert len(read_lines(first)) == 3
    journal.close()
