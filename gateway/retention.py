"""Retention: uploads, eval items and stored responses older than the operator's limit are deleted, on every
gateway, periodically; and bytes in the files dir that no file row names (a process killed mid-upload or
mid-deletion) are swept once they are ten minutes old.

``LLMAAS_RETENTION_DAYS_FILES``: uploaded files (rows and bytes) older than this many days go.
``LLMAAS_RETENTION_DAYS_EVAL_ITEMS``: the items and samples of eval runs that finished this many days ago go
(the run keeps its result counts). Unset (the default): kept until their owner deletes them.
``LLMAAS_RETENTION_DAYS_RESPONSES``: responses of ``/v1/responses`` stored this many days ago go, with their
input items (30 by default, as OpenAI keeps them; a chain continues from what is left of it).
``LLMAAS_RETENTION_DAYS_CHAT_COMPLETIONS``: chat completions kept with ``store: true`` this many days ago go (30 by
default, as OpenAI keeps them).
``LLMAAS_RETENTION_DAYS_WEBHOOK_DELIVERIES``: webhook deliveries that ended (delivered or failed) this many days ago
go (30 by default).

A pass deletes rows by their age in batches and then the bytes of what it deleted, so any number of gateways
may run it at once (a row is deleted once; a second pass finds nothing). Each pass that deleted something
appends an audit entry by ``system`` with the counts. Prompts of chat and completions requests are never stored,
unless a chat request asks it with ``store: true``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from starlette.concurrency import run_in_threadpool

from gateway import audit
from gateway.clock import utcnow
from gateway.db import Database, EvalRun, EvalRunItem, File, affected_rows
from gateway.evals.service import FINAL
from gateway.fine_tuning.files import FileStore
from gateway.responses.store import purge_responses
from gateway.stored_completions.store import purge_completions
from gateway.webhooks.outbox import purge_deliveries

logger = logging.getLogger(__name__)
_BATCH = 500


class Retention:
    def __init__(
        self,
        db: Database,
        files: FileStore,
        *,
        files_days: float | None,
        eval_items_days: float | None,
        responses_days: float | None = None,
        completions_days: float | None = None,
        webhook_deliveries_days: float | None = None,
    ) -> None:
        self._db = db
        self._files = files
        self._files_days = files_days
        self._eval_items_days = eval_items_days
        self._responses_days = responses_days
        self._completions_days = completions_days
        self._webhook_deliveries_days = webhook_deliveries_days

    def purge_once(self, now: datetime | None = None) -> dict[str, int]:
        """One pass (blocking): how many files, eval items, stored responses and chat completions, ended webhook
        deliveries and orphaned bytes it deleted."""
        now = now or utcnow()
        purged = {"files": 0, "eval_items": 0, "responses": 0, "chat_completions": 0}
        purged["orphaned_files"] = self._files.sweep_orphans()
        if self._files_days is not None:
            purged["files"] = self._purge_files(now - timedelta(days=self._files_days))
        if self._eval_items_days is not None:
            purged["eval_items"] = self._purge_eval_items(now - timedelta(days=self._eval_items_days))
        if self._responses_days is not None:
            purged["responses"] = self._purge_responses(now - timedelta(days=self._responses_days))
        if self._completions_days is not None:
            purged["chat_completions"] = self._purge_completions(now - timedelta(days=self._completions_days))
        if self._webhook_deliveries_days is not None:
            purged["webhook_deliveries"] = purge_deliveries(
                self._db, now - timedelta(days=self._webhook_deliveries_days)
            )
        return purged

    def _purge_files(self, before: datetime) -> int:
        total = 0
        while True:
            with self._db.session() as session:
                ids = list(session.scalars(select(File.id).where(File.created_at < before).limit(_BATCH)))
                if not ids:
                    return total
                deleted = affected_rows(session.execute(delete(File).where(File.id.in_(ids), File.created_at < before)))
                if deleted:
                    details = {"files": deleted, "created_before": before.isoformat()}
                    audit.record(session, audit.SYSTEM_ACTOR, "retention.purge", "file", None, None, details)
            self._files.remove_bytes(ids)
            total += deleted

    def _purge_eval_items(self, before: datetime) -> int:
        old_runs = select(EvalRun.id).where(EvalRun.status.in_(FINAL), EvalRun.finished_at < before)
        with self._db.session() as session:
            deleted = affected_rows(session.execute(delete(EvalRunItem).where(EvalRunItem.run_id.in_(old_runs))))
            if deleted:
                details = {"eval_items": deleted, "finished_before": before.isoformat()}
                audit.record(session, audit.SYSTEM_ACTOR, "retention.purge", "eval_item", None, None, details)
        return int(deleted or 0)

    def _purge_responses(self, before: datetime) -> int:
        deleted = purge_responses(self._db, before)
        if deleted:
            with self._db.session() as session:
                details = {"responses": deleted, "created_before": before.isoformat()}
                audit.record(session, audit.SYSTEM_ACTOR, "retention.purge", "response", None, None, details)
        return deleted

    def _purge_completions(self, before: datetime) -> int:
        deleted = purge_completions(self._db, before)
        if deleted:
            with self._db.session() as session:
                details = {"chat_completions": deleted, "created_before": before.isoformat()}
                audit.record(session, audit.SYSTEM_ACTOR, "retention.purge", "chat_completion", None, None, details)
        return deleted

    async def run(self, interval_seconds: float) -> None:
        """A pass now and then every ``interval_seconds``, until cancelled; a failed pass is tried again."""
        while True:
            try:
                purged = await run_in_threadpool(self.purge_once)
                if any(purged.values()):
                    logger.info("retention deleted %s", ", ".join(f"{count} {kind}" for kind, count in purged.items()))
            except Exception:
                logger.exception("the retention pass failed; it runs again in %.0f s", interval_seconds)
            await asyncio.sleep(interval_seconds)
