"""Eval runs as the eval runner sees them (``gateway.evals.runner``): claiming a run (any gateway; a run whose
runner stopped heartbeating is taken over and resumed), its heartbeat, its pending items, each item's sample and
grades as it finishes, and the run's end sealed with its tallies (``end_run``, also a tenant's cancel's). Every
change is a compare-and-set through the run's lease (``adapters.leases``): a run cancelled, deleted or taken over is
never written by its former runner."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.leases import compare_and_set
from gateway.clock import utcnow
from gateway.db import Database, Eval, EvalRun, EvalRunItem
from gateway.errors import NotFoundError
from gateway.evals.objects import tally
from gateway.evals.recipe import PENDING, RUN_LEASE, ItemStatus, RunStatus
from gateway.webhooks.events import eval_run_ended


class RunQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    def claim(self, runner_id: str, stale_after: float) -> str | None:
        """A queued run, or one whose runner stopped heartbeating, now this runner's (compare-and-set)."""
        now = utcnow()
        with self._db.session() as session:
            return RUN_LEASE.claim(
                session,
                runner_id,
                now,
                free=(RunStatus.QUEUED,),
                takeover=(RunStatus.IN_PROGRESS,),
                stale_before=now - timedelta(seconds=stale_after),
                status=RunStatus.IN_PROGRESS,
                started_at=now,
            )

    def run_for_runner(self, run_id: str) -> tuple[EvalRun, Eval]:
        with self._db.session() as session:
            run = session.get(EvalRun, run_id)
            definition = session.get(Eval, run.eval_id) if run else None
            if run is None or definition is None:
                raise NotFoundError(f"No run found with id '{run_id}'.")
            session.expunge_all()
            return run, definition

    def heartbeat(self, run_id: str, runner_id: str) -> bool:
        """Still this runner's and still running (False once cancelled, deleted or taken over)."""
        with self._db.session() as session:
            return RUN_LEASE.heartbeat_of(session, run_id, runner_id, utcnow(), statuses=(RunStatus.IN_PROGRESS,))

    def pending(self, run_id: str) -> list[EvalRunItem]:
        with self._db.session() as session:
            rows = list(
                session.scalars(
                    select(EvalRunItem)
                    .where(EvalRunItem.run_id == run_id, EvalRunItem.status == PENDING)
                    .order_by(EvalRunItem.position)
                )
            )
            session.expunge_all()
            return rows

    def record(
        self,
        run_id: str,
        runner_id: str,
        item_id: int,
        status: ItemStatus,
        sample: dict[str, Any],
        results: list[dict[str, Any]],
    ) -> bool:
        """Write an item's outcome if the run is still this runner's and running (False: stop). The lease's
        heartbeat comes first: it locks the run's row, so a cancel either sees this item or this item is not
        written (a cancelled run's tallies never change after its cancel answered)."""
        with self._db.session() as session:
            if not RUN_LEASE.heartbeat_of(session, run_id, runner_id, utcnow(), statuses=(RunStatus.IN_PROGRESS,)):
                return False
            compare_and_set(
                session,
                EvalRunItem,
                (EvalRunItem.id == item_id, EvalRunItem.status == PENDING),
                {"status": status, "sample": sample, "results": results, "created_at": utcnow()},
            )
            return True

    def finish(self, run_id: str, runner_id: str, status: RunStatus, error: dict[str, str] | None) -> None:
        """End the run if it is still this runner's and running."""
        with self._db.session() as session:
            run = session.get(EvalRun, run_id)
            if run is not None:
                end_run(session, run, status, expected=(RunStatus.IN_PROGRESS,), owner=runner_id, error=error)


def end_run(
    session: Session,
    run: EvalRun,
    status: RunStatus,
    *,
    expected: Collection[RunStatus],
    owner: str | None = None,
    error: dict[str, str] | None = None,
) -> None:
    """Move the run from an ``expected`` status (as ``owner``'s, given one) to ``status``, sealed with its tallies
    and usage counted from its items, and queue its webhook event; nothing if it was not as expected. The move comes
    first: it locks the run's row (an item being written holds it too, ``RunQueue.record``), so the tallies count
    every item written before it and no item is written after it."""
    if not RUN_LEASE.move(session, run.id, expected=expected, owner=owner, status=status, finished_at=utcnow()):
        return
    definition = session.get(Eval, run.eval_id)
    graded = session.execute(
        select(EvalRunItem.status, EvalRunItem.results, EvalRunItem.sample).where(
            EvalRunItem.run_id == run.id, EvalRunItem.status != PENDING
        )
    ).all()
    total = session.scalar(select(func.count()).where(EvalRunItem.run_id == run.id))
    criteria = [c["name"] for c in definition.testing_criteria] if definition else []
    counts, per_criteria = tally([(s, r) for s, r, _ in graded], criteria)
    counts["total"] = int(total or 0)
    usage = Counter[str]()
    for _, _, sample in graded:
        if sample and sample.get("usage"):
            usage["invocation_count"] += 1
            usage["prompt_tokens"] += sample["usage"]["prompt_tokens"]
            usage["completion_tokens"] += sample["usage"]["completion_tokens"]
    sealed = {"result_counts": counts, "per_criteria": per_criteria, "usage": dict(usage), "error": error}
    compare_and_set(session, EvalRun, (EvalRun.id == run.id,), sealed)
    eval_run_ended(session, run.tenant_id, run.id, status)
