"""The fine-tuning worker's bookkeeping on both databases: claiming without double claims, dead workers,
cancellation before training starts, jobs whose files vanished, database errors, and billing exactly once (the
gateway's real ``charge_job`` hook writes the ledger in the job's final transition)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from adapters.errors import InvalidJobRequest
from adapters.hyperparameters import Hyperparameters
from adapters.job_progress import JobProgress
from adapters.jobs import JobRequest, JobService, add_event, new_job_id
from adapters.recipe import LoraShape, TrainingRecipe
from adapters.registry import AdapterRegistry
from adapters.store import Adapter, FineTuningJob, utcnow
from adapters.training import Checkpoint, StepMetrics, TrainingCancelled, TrainingResult
from adapters.worker import TRAINING_FAILED, Worker
from gateway.accounting.pricing import PriceBook
from gateway.accounting.training_billing import job_charger
from gateway.db import Database, UsageRecord

charge_job = job_charger(PriceBook({}))  # no prices: these tests are about when a job is charged


def job_request(**overrides: object) -> JobRequest:
    values: dict[str, object] = {
        "job_id": new_job_id(),
        "tenant_id": "ten_1",
        "tenant_name": "acme",
        "model": "base",
        "training_file": "file-abc",
        "validation_file": None,
        "suffix": None,
        "recipe": TrainingRecipe(
            hyperparameters=Hyperparameters(n_epochs=1, batch_size=1, learning_rate_multiplier=1.0),
            lora=LoraShape(rank=8, alpha=16, target_modules=("q_proj",)),
            seed=0,
        ),
        "estimated_tokens": 10,
        "reserved_cost_nanos": 0,
        "metadata": None,
        "created_at": utcnow(),
    }
    values.update(overrides)
    return JobRequest(**values)  # type: ignore[arg-type]


def make_worker(database: Database, tmp_path: Path, files: dict[str, bytes] | None = None) -> Worker:
    registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
    store = files or {}
    return Worker(
        database.sessions, registry, lambda tenant, file_id: store.get(file_id), {"base": tmp_path}, charge_job
    )


def service(database: Database) -> JobService:
    return JobService(database.sessions, on_final=charge_job)


def charges(database: Database, job_id: str) -> list[tuple[str, int]]:
    """The job's ledger records: (outcome, tokens)."""
    with database.sessions() as session:
        rows = session.scalars(select(UsageRecord).where(UsageRecord.request_id == job_id)).all()
        return [(row.outcome, row.prompt_tokens) for row in rows]


def test_concurrent_workers_never_claim_the_same_job(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    created = {jobs.create(job_request()).id for _ in range(12)}
    workers = [make_worker(database, tmp_path) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(worker: Worker) -> None:
        while (job_id := worker.claim()) is not None:
            with lock:
                claimed.append(job_id)

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(created)
    with database.sessions() as session:
        owners = {job.id: job.worker_id for job in session.query(FineTuningJob)}
    assert all(owner in {w.worker_id for w in workers} for owner in owners.values())


def test_a_dead_workers_job_is_failed_not_left_running(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    job_id = jobs.create(job_request()).id
    dead = make_worker(database, tmp_path)
    assert dead.claim() == job_id
    with database.sessions.begin() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        job.status = "running"
        job.heartbeat_at = utcnow() - timedelta(minutes=5)
    partial = AdapterRegistry(database.sessions, tmp_path / "adapters").job_dir(job_id) / "checkpoints" / "step-1"
    partial.mkdir(parents=True)  # what the dead worker had written
    make_worker(database, tmp_path).fail_dead_jobs()
    assert not partial.parent.parent.exists()
    failed = jobs.get("ten_1", job_id).model_dump()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "worker_died"
    assert failed["finished_at"] is not None
    assert charges(database, job_id) == [("failed", 0)]
    make_worker(database, tmp_path).fail_dead_jobs()
    assert charges(database, job_id) == [("failed", 0)]


def test_a_job_cancelled_while_queued_never_trains(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    job_id = jobs.create(job_request()).id
    assert jobs.cancel("ten_1", job_id).status == "cancelled"
    with database.sessions() as session:
        assert session.get(FineTuningJob, job_id).settled_at is not None  # type: ignore[union-attr]
    assert make_worker(database, tmp_path).run_once() is None  # nothing left to claim
    assert jobs.get("ten_1", job_id).status == "cancelled"
    assert charges(database, job_id) == [("cancelled", 0)]


def test_a_job_cancelled_after_a_worker_claimed_it_is_not_resurrected(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    job_id = jobs.create(job_request()).id
    worker = make_worker(database, tmp_path, {"file-abc": good})
    assert worker.claim() == job_id
    jobs.cancel("ten_1", job_id)  # between the claim and the worker's first move
    worker.process(job_id)
    assert jobs.get("ten_1", job_id).status == "cancelled"
    assert charges(database, job_id) == [("cancelled", 0)]


def test_a_job_whose_file_vanished_fails_with_the_reason(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    job_id = jobs.create(job_request(training_file="file-gone")).id
    assert make_worker(database, tmp_path).run_once() == job_id
    job = jobs.get("ten_1", job_id).model_dump()
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "file_not_found",
        "message": "File 'file-gone' no longer exists.",
        "param": "training_file",
    }
    messages = [e.message for e in jobs.events("ten_1", job_id, None, 20).data]
    assert messages[0] == "File 'file-gone' no longer exists."


def test_event_ids_are_random_and_page_newest_first(database: Database) -> None:
    jobs = service(database)
    job_id = jobs.create(job_request()).id
    other = jobs.create(job_request()).id
    with database.sessions.begin() as session:
        for step in range(5):
            add_event(session, job_id, f"step {step}")
            add_event(session, other, f"other {step}")
    first = jobs.events("ten_1", job_id, None, 3).model_dump()
    assert [e["message"] for e in first["data"]] == ["step 4", "step 3", "step 2"] and first["has_more"]
    ids = [e["id"] for e in first["data"]]
    assert all(re.fullmatch(r"ftevent-[0-9a-f]{24}", event_id) for event_id in ids)
    rest = jobs.events("ten_1", job_id, ids[-1], 10).model_dump()
    assert [e["message"] for e in rest["data"]][:2] == ["step 1", "step 0"] and not rest["has_more"]
    # Another job's event is no cursor here, nor is an id never minted.
    other_id = jobs.events("ten_1", other, None, 1).data[0].id
    for cursor in (other_id, "ftevent-" + "0" * 24):
        assert jobs.events("ten_1", job_id, cursor, 10).model_dump() == {
            "object": "list",
            "data": [],
            "has_more": False,
        }


class ExplodingWorker(Worker):
    def _train(self, job, base_dir, train, validation, cancel):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error at /srv/secret/path/kernels.cu:42 (tenant ten_other's batch)")


def test_a_training_failure_shows_a_category_and_never_the_exception_text(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = service(database)
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    job_id = jobs.create(job_request()).id
    registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
    worker = ExplodingWorker(database.sessions, registry, lambda t, f: good, {"base": tmp_path}, charge_job)
    with caplog.at_level(logging.ERROR, logger="adapters.worker"):
        assert worker.run_once() == job_id
    job = jobs.get("ten_1", job_id).model_dump()
    assert job["status"] == "failed"
    assert job["error"] == {"code": "training_failed", "message": TRAINING_FAILED, "param": None}
    shown = json.dumps([job, jobs.events("ten_1", job_id, None, 100).model_dump()])
    assert "secret" not in shown and "CUDA" not in shown
    assert "CUDA error at /srv/secret/path" in caplog.text  # the operator's log has it


def test_a_file_the_parser_cannot_read_is_an_invalid_training_file(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    bad = jobs.create(job_request(training_file="file-bad")).id
    odd = jobs.create(job_request(training_file="file-odd")).id
    deep = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"  # too deep for the JSON parser
    files = {"file-bad": b'{"messages": 1}\n', "file-odd": deep}
    worker = make_worker(database, tmp_path, files)
    assert {worker.run_once(), worker.run_once()} == {bad, odd}
    assert jobs.get("ten_1", bad).error == {
        "code": "invalid_training_file",
        "message": "File 'file-bad' is invalid: line 1: messages must be a list (got number)",
        "param": "training_file",
    }
    error = jobs.get("ten_1", odd).error
    assert error["code"] == "invalid_training_file" and "recursion" not in error["message"].lower()


def test_an_unknown_base_model_fails_the_job(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    job_id = jobs.create(job_request(model="retired-model")).id
    assert make_worker(database, tmp_path, {"file-abc": good}).run_once() == job_id
    assert jobs.get("ten_1", job_id).error["code"] == "model_not_available"


class StandInWorker(Worker):
    """A worker whose training the test stands in for (``_train``); ``training`` is set once it has started."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.training = threading.Event()


StandIn = TypeVar("StandIn", bound=StandInWorker)


def training_on_a_thread(
    database: Database, tmp_path: Path, kind: type[StandIn], heartbeat_seconds: float
) -> tuple[JobService, str, AdapterRegistry, StandIn, threading.Thread]:
    """A new job, claimed and being trained by a ``kind`` worker on its own thread: the job service, the job's id,
    the adapter registry, the worker and its thread."""
    jobs = service(database)
    job_id = jobs.create(job_request()).id
    registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    worker = kind(
        database.sessions,
        registry,
        lambda t, f: good,
        {"base": tmp_path},
        charge_job,
        heartbeat_seconds=heartbeat_seconds,
    )
    runner = threading.Thread(target=worker.run_once)
    runner.start()
    assert worker.training.wait(30)
    return jobs, job_id, registry, worker, runner


class SlowTrainingWorker(StandInWorker):
    """Trains nothing: waits until released, then returns an adapter dir (the bookkeeping is what is tested)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def _train(self, job, base_dir, train, validation, cancel):  # type: ignore[no-untyped-def]
        self.training.set()
        self.release.wait(30)
        adapter_dir = self._registry.job_dir(job.id) / "adapter"
        checkpoint = Checkpoint(1, self._registry.job_dir(job.id) / "checkpoints" / "step-1", 0.5, None)
        for directory in (adapter_dir, checkpoint.path):
            directory.mkdir(parents=True)
        return TrainingResult(adapter_dir, 123, 1, checkpoint, (checkpoint,), lora_layers=10)


def test_a_job_failed_as_dead_while_training_stays_failed_and_charged_once(database: Database, tmp_path: Path) -> None:
    jobs, job_id, registry, slow, runner = training_on_a_thread(database, tmp_path, SlowTrainingWorker, 60)
    with database.sessions.begin() as session:  # its heartbeats stopped reaching the database
        session.get(FineTuningJob, job_id).heartbeat_at = utcnow() - timedelta(minutes=5)  # type: ignore[union-attr]
    make_worker(database, tmp_path).fail_dead_jobs()
    slow.release.set()  # the slow worker comes back with a trained adapter
    runner.join(10)
    job = jobs.get("ten_1", job_id).model_dump()
    assert (job["status"], job["error"]["code"], job["fine_tuned_model"]) == ("failed", "worker_died", None)
    assert charges(database, job_id) == [("failed", 0)]
    with database.sessions() as session:
        assert session.scalars(select(Adapter).where(Adapter.job_id == job_id)).all() == []
    assert not registry.job_dir(job_id).exists()  # what it wrote is removed, not left on disk


def step(number: int, trained_tokens: int) -> StepMetrics:
    return StepMetrics(number, 9, 1, 1.0, None, None, trained_tokens)


class StoppableTrainingWorker(StandInWorker):
    """Trains until told to stop, reporting a metrics step as it starts and one more as it stops."""

    def _train(self, job, base_dir, train, validation, cancel):  # type: ignore[no-untyped-def]
        progress = JobProgress(self._sessions, job.id, self.worker_id, "ft:base:acme::x")
        progress.on_metrics(step(1, trained_tokens=40))
        (self._registry.job_dir(job.id) / "checkpoints" / "step-1").mkdir(parents=True)
        self.training.set()
        assert cancel.wait(30)
        progress.on_metrics(step(2, trained_tokens=80))
        raise TrainingCancelled("cancelled before step 3 of 9", 80)


def test_a_running_job_answers_its_cancel_cancelled_and_its_worker_stops(database: Database, tmp_path: Path) -> None:
    """The cancel's answer is final at once (charged what was trained so far), every retrieve agrees, and the
    worker stops at its next heartbeat, writing no more progress and keeping nothing."""
    jobs, job_id, registry, _, runner = training_on_a_thread(database, tmp_path, StoppableTrainingWorker, 0.2)
    answer = jobs.cancel("ten_1", job_id)
    assert answer.status == "cancelled" and answer.finished_at is not None and answer.trained_tokens == 40
    assert jobs.get("ten_1", job_id).model_dump() == answer.model_dump()
    runner.join(10)
    assert not runner.is_alive()  # stopped at its next heartbeat
    assert jobs.get("ten_1", job_id).model_dump() == answer.model_dump()  # its late step changed nothing
    assert charges(database, job_id) == [("cancelled", 40)]
    assert not registry.job_dir(job_id).exists()
    with database.sessions() as session:
        assert session.scalars(select(Adapter).where(Adapter.job_id == job_id)).all() == []
    with pytest.raises(InvalidJobRequest):
        jobs.cancel("ten_1", job_id)


def test_a_succeeding_job_is_registered_and_charged_in_one_transition(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    job_id = jobs.create(job_request()).id
    registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
    worker = SlowTrainingWorker(database.sessions, registry, lambda t, f: good, {"base": tmp_path}, charge_job)
    worker.release.set()
    assert worker.run_once() == job_id
    job = jobs.get("ten_1", job_id).model_dump()
    assert job["status"] == "succeeded" and job["trained_tokens"] == 123
    assert job["lora"]["layers"] == 10  # "auto", resolved
    assert registry.get(job["fine_tuned_model"], "ten_1") is not None
    assert registry.get(job["fine_tuned_model"] + ":ckpt-step-1", "ten_1") is not None
    assert [r.name for r in registry.for_tenant("ten_1")] == [job["fine_tuned_model"]]  # checkpoints unlisted
    assert charges(database, job_id) == [("succeeded", 123)]
    deleted = registry.delete(job["fine_tuned_model"], "ten_1")
    assert sorted(r.name for r in deleted) == [job["fine_tuned_model"], job["fine_tuned_model"] + ":ckpt-step-1"]


class FlakySessions:
    """The worker's session factory, failing its first ``failures`` uses as an unreachable database does."""

    def __init__(self, sessions: sessionmaker[Session], failures: int) -> None:
        self._sessions = sessions
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    def __call__(self) -> Session:
        self._maybe_fail()
        return self._sessions()

    def begin(self) -> Any:
        self._maybe_fail()
        return self._sessions.begin()


def test_database_errors_do_not_stop_the_worker(database: Database, tmp_path: Path) -> None:
    jobs = service(database)
    job_id = jobs.create(job_request(model="retired-model")).id
    flaky = FlakySessions(database.sessions, failures=5)
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
    worker = Worker(
        flaky,  # type: ignore[arg-type]
        registry,
        lambda t, f: good,
        {"base": tmp_path},
        charge_job,
        poll_seconds=0.01,
        max_backoff_seconds=0.05,
    )
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while jobs.get("ten_1", job_id).status != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        runner.join(10)
    assert not runner.is_alive()
    assert flaky.failures == 0
    assert jobs.get("ten_1", job_id).error["code"] == "model_not_available"
    assert charges(database, job_id) == [("failed", 0)]
