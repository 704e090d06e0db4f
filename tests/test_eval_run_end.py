"""An eval run's end seals it, on SQLite and PostgreSQL: a cancel answers the tallies the run keeps, its runner
writes no item after it (an item being written when the cancel comes is counted by it), and a runner's late end
changes nothing (``gateway.evals.queue``, ``EvalService.cancel_run``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from adapters.leases import compare_and_set
from gateway.db import Database
from gateway.evals.models import EvalCreate, RunCreate
from gateway.evals.queue import RunQueue
from gateway.evals.recipe import ItemStatus, RunStatus
from gateway.evals.service import EvalService
from gateway.tenancy.models import TenantCreate
from gateway.tenancy.service import TenancyService

CRITERION = {"type": "string_check", "name": "same", "input": "{{sample.output_text}}", "reference": "x"}
CRITERION |= {"operation": "eq"}
SAMPLE = {"output_text": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
PASSED = [{"name": "same", "passed": True}]


def queued_run(database: Database, items: int) -> tuple[EvalService, str, str, str]:
    """A tenant's run of ``items`` items, queued: (the service, tenant, eval id, run id)."""
    evals = EvalService(database)
    tenant = TenancyService(database).create_tenant(TenantCreate(name="tenant-a")).id
    body = EvalCreate.model_validate(
        {"data_source_config": {"type": "custom", "item_schema": {}}, "testing_criteria": [CRITERION]}
    )
    eval_id = evals.create(tenant, body).id
    source = {"type": "file_content", "content": [{"item": {"n": n}} for n in range(items)]}
    run_body = RunCreate.model_validate({"data_source": {"type": "jsonl", "source": source}})
    run = evals.create_run(tenant, "key-a", eval_id, run_body, "jsonl", [({"n": n}, None) for n in range(items)])
    return evals, tenant, eval_id, run.id


def test_a_cancel_seals_the_run_and_its_runner_writes_no_more(database: Database) -> None:
    evals, tenant, eval_id, run_id = queued_run(database, items=3)
    queue = RunQueue(database)
    assert queue.claim("runner-a", stale_after=30) == run_id
    first, second, third = queue.pending(run_id)
    assert queue.record(run_id, "runner-a", first.id, ItemStatus.PASS, SAMPLE, PASSED)

    answer = evals.cancel_run(tenant, eval_id, run_id)
    assert answer.status == "canceled"
    assert (answer.result_counts.total, answer.result_counts.passed) == (3, 1)
    assert [(r.testing_criteria, r.passed) for r in answer.per_testing_criteria_results] == [("same", 1)]
    assert [(u.invocation_count, u.prompt_tokens, u.completion_tokens) for u in answer.per_model_usage] == [(1, 7, 2)]

    assert not queue.record(run_id, "runner-a", second.id, ItemStatus.PASS, SAMPLE, PASSED)  # told to stop
    assert [item.id for item in queue.pending(run_id)] == [second.id, third.id]
    queue.finish(run_id, "runner-a", RunStatus.COMPLETED, None)  # its end comes too late: nothing changes
    assert evals.get_run(tenant, eval_id, run_id) == answer


def test_an_item_being_written_when_the_cancel_comes_is_in_the_cancels_answer(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner holds the run's row from its lease check to its commit: the cancel waits for the item and counts
    it (were the item written unlocked, the cancel would answer without it and the run change after)."""
    evals, tenant, eval_id, run_id = queued_run(database, items=2)
    queue = RunQueue(database)
    assert queue.claim("runner-a", stale_after=30) == run_id
    item = queue.pending(run_id)[0]
    writing, cancel_sent = threading.Event(), threading.Event()

    def slow_item_write(*args: Any, **kwargs: Any) -> bool:
        writing.set()
        assert cancel_sent.wait(10)
        time.sleep(0.5)  # the cancel is at the run's row now
        return compare_and_set(*args, **kwargs)

    monkeypatch.setattr("gateway.evals.queue.compare_and_set", slow_item_write)
    recorded: list[bool] = []
    writer = threading.Thread(
        target=lambda: recorded.append(queue.record(run_id, "runner-a", item.id, ItemStatus.PASS, SAMPLE, PASSED))
    )
    writer.start()
    assert writing.wait(10)
    monkeypatch.setattr("gateway.evals.queue.compare_and_set", compare_and_set)  # the cancel's own writes
    cancel_sent.set()
    answer = evals.cancel_run(tenant, eval_id, run_id)
    writer.join(10)
    assert recorded == [True]
    assert answer.result_counts.passed == 1
    assert evals.get_run(tenant, eval_id, run_id) == answer
