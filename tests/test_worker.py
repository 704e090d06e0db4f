"""The fine-tuning worker's bookkeeping on both databases: claiming without double claims, dead workers,
cancellation before training starts, and jobs whose files vanished."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from adapters.jobs import JobRequest, JobService, new_job_id
from adapters.registry import AdapterRegistry
from adapters.store import FineTuningJob, utcnow
from adapters.worker import Worker
from gateway.db import Database


def job_request(**overrides: object) -> JobRequest:
    values: dict[str, object] = {
        "job_id": new_job_id(),
        "tenant_id": "ten_1",
        "tenant_name": "acme",
        "model": "base",
        "training_file": "file-abc",
        "validation_file": None,
        "suffix": None,
        "seed": 0,
        "n_epochs": 1,
        "batch_size": 1,
        "learning_rate_multiplier": 1.0,
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_target_modules": ("q_proj",),
        "estimated_tokens": 10,
        "metadata": None,
    }
    values.update(overrides)
    return JobRequest(**values)  # type: ignore[arg-type]


def make_worker(database: Database, tmp_path: Path, files: dict[str, bytes] | None = None) -> Worker:
    registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
    store = files or {}
    return Worker(database.sessions, registry, lambda tenant, file_id: store.get(file_id), {"base": tmp_path})


def test_concurrent_workers_never_claim_the_same_job(database: Database, tmp_path: Path) -> None:
    jobs = JobService(database.sessions)
    created = {jobs.create(job_request())["id"] for _ in range(12)}
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
    jobs = JobService(database.sessions)
    job_id = jobs.create(job_request())["id"]
    dead = make_worker(database, tmp_path)
    assert dead.claim() == job_id
    with database.sessions.begin() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        job.status = "running"
        job.heartbeat_at = utcnow() - timedelta(minutes=5)
    make_worker(database, tmp_path).fail_dead_jobs()
    failed = jobs.get("ten_1", job_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "worker_died"
    assert failed["finished_at"] is not None


def test_a_job_cancelled_while_queued_never_trains(database: Database, tmp_path: Path) -> None:
    jobs = JobService(database.sessions)
    job_id = jobs.create(job_request())["id"]
    assert jobs.cancel("ten_1", job_id)["status"] == "cancelled"
    assert make_worker(database, tmp_path).run_once() is None  # nothing left to claim
    assert jobs.get("ten_1", job_id)["status"] == "cancelled"


def test_a_job_whose_file_vanished_fails_with_the_reason(database: Database, tmp_path: Path) -> None:
    jobs = JobService(database.sessions)
    job_id = jobs.create(job_request(training_file="file-gone"))["id"]
    assert make_worker(database, tmp_path).run_once() == job_id
    job = jobs.get("ten_1", job_id)
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "file_not_found",
        "message": "File 'file-gone' no longer exists.",
        "param": "training_file",
    }
    messages = [e["message"] for e in jobs.events("ten_1", job_id, None, 20)["data"]]
    assert messages[0] == "File 'file-gone' no longer exists."


def test_an_unknown_base_model_fails_the_job(database: Database, tmp_path: Path) -> None:
    jobs = JobService(database.sessions)
    good = b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    job_id = jobs.create(job_request(model="retired-model"))["id"]
    assert make_worker(database, tmp_path, {"file-abc": good}).run_once() == job_id
    assert jobs.get("ten_1", job_id)["error"]["code"] == "model_not_available"
