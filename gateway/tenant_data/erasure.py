"""Deleting a tenant deletes its data: what it uploaded, trained, evaluated and signed in with.

One transaction removes every row the tenant owns (files, fine-tuning jobs with their events and checkpoints,
adapters, evals with their runs and items, batches with their requests, stored responses with their input items,
stored chat completions, idempotency keys with their answers, webhook endpoints with their deliveries (events not
sent yet are not sent), console sessions, keys, the tenant) and appends the audit entry; an unfinished fine-tuning
job is first cancelled and charged for what it trained (its worker notices within seconds, stops, and registers
nothing). Once committed, the bytes go: uploaded files and every job's dir in
the adapter store. The caller then unloads the adapters from the engines (every replica).

Model aliases go with their versions in the same transaction.

What stays, for accounting, holds no content: usage records, the daily usage sums and the audit log, keyed by
the tenant's id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from adapters.jobs import WAITING, transition
from adapters.registry import AdapterRecord, AdapterRegistry
from adapters.store import FineTuningJob, JobCheckpoint, JobEvent
from gateway import audit
from gateway.accounting.pricing import PriceBook
from gateway.accounting.training_billing import job_charger
from gateway.aliases.service import erase_tenant_aliases
from gateway.clock import utcnow
from gateway.db import ApiKey, Batch, BatchRequest, ConsoleSession, Database, Eval, EvalRun, EvalRunItem, File, Tenant
from gateway.fine_tuning.files import FileStore
from gateway.idempotency import erase_tenant_keys
from gateway.responses.store import erase_tenant_responses
from gateway.stored_completions.store import erase_tenant_completions
from gateway.tenancy.service import TenancyService
from gateway.tenancy.sessions import end_sessions
from gateway.webhooks.service import erase_tenant_webhooks


@dataclass(frozen=True)
class Erased:
    tenant_id: str
    adapters: list[AdapterRecord]
    """Deleted adapters the engines may still hold loaded."""
    counts: dict[str, int]


class TenantEraser:
    def __init__(self, db: Database, files: FileStore, registry: AdapterRegistry, prices: PriceBook) -> None:
        self._db = db
        self._files = files
        self._registry = registry
        self._charge = job_charger(prices)

    def erase(self, ref: str, actor: audit.Actor) -> Erased:
        """Blocking: delete the tenant (by name or id) and all it owns, rows first, then bytes."""
        with self._db.session() as session:
            found = TenancyService._find(session, ref)
            tenant_id, name = found.id, found.name
            session.scalar(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
            file_ids = list(session.scalars(select(File.id).where(File.tenant_id == tenant_id)))
            job_ids = list(session.scalars(select(FineTuningJob.id).where(FineTuningJob.tenant_id == tenant_id)))
            for job_id in job_ids:
                transition(
                    session,
                    job_id,
                    expected=(*WAITING, "running"),
                    on_final=self._charge,
                    message="Cancelled: the organization was deleted",
                    status="cancelled",
                )
            adapters = self._registry.remove_for_tenant(session, tenant_id)
            end_sessions(session, actor, "tenant_deleted", ConsoleSession.tenant_id == tenant_id, utcnow())
            counts = _delete_rows(session, tenant_id)
            counts["responses"] = erase_tenant_responses(session, tenant_id)
            counts["chat_completions"] = erase_tenant_completions(session, tenant_id)
            counts["webhook_endpoints"] = erase_tenant_webhooks(session, tenant_id)
            counts["aliases"] = erase_tenant_aliases(session, tenant_id)
            erase_tenant_keys(session, tenant_id)
            counts |= {"files": len(file_ids), "fine_tuning_jobs": len(job_ids), "adapters": len(adapters)}
            session.execute(delete(Tenant).where(Tenant.id == tenant_id))
            audit.record(session, actor, "tenant.delete", "tenant", tenant_id, tenant_id, {"name": name, **counts})
        self._files.remove_bytes(file_ids)
        self._registry.remove_job_dirs({*job_ids, *(adapter.job_id for adapter in adapters)})
        return Erased(tenant_id, adapters, counts)


def _delete_rows(session: Session, tenant_id: str) -> dict[str, int]:
    """Every row the tenant owns but its adapters and itself; how many of each kind of content went."""
    jobs = select(FineTuningJob.id).where(FineTuningJob.tenant_id == tenant_id).scalar_subquery()
    runs = select(EvalRun.id).where(EvalRun.tenant_id == tenant_id).scalar_subquery()
    batches = select(Batch.id).where(Batch.tenant_id == tenant_id).scalar_subquery()
    counted: dict[str, Any] = {
        "evals": select(func.count()).select_from(Eval).where(Eval.tenant_id == tenant_id),
        "eval_runs": select(func.count()).select_from(EvalRun).where(EvalRun.tenant_id == tenant_id),
        "batches": select(func.count()).select_from(Batch).where(Batch.tenant_id == tenant_id),
        "keys": select(func.count()).select_from(ApiKey).where(ApiKey.tenant_id == tenant_id),
    }
    counts = {name: int(session.scalar(query) or 0) for name, query in counted.items()}
    for statement in (
        delete(JobEvent).where(JobEvent.job_id.in_(jobs)),
        delete(JobCheckpoint).where(JobCheckpoint.job_id.in_(jobs)),
        delete(FineTuningJob).where(FineTuningJob.tenant_id == tenant_id),
        delete(EvalRunItem).where(EvalRunItem.run_id.in_(runs)),
        delete(EvalRun).where(EvalRun.tenant_id == tenant_id),
        delete(Eval).where(Eval.tenant_id == tenant_id),
        delete(BatchRequest).where(BatchRequest.batch_id.in_(batches)),
        delete(Batch).where(Batch.tenant_id == tenant_id),
        delete(File).where(File.tenant_id == tenant_id),
        delete(ConsoleSession).where(ConsoleSession.tenant_id == tenant_id),
        delete(ApiKey).where(ApiKey.tenant_id == tenant_id),
    ):
        session.execute(statement.execution_options(synchronize_session=False))
    return counts
