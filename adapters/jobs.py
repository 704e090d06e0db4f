"""Fine-tuning jobs as the API sees them: create, list, get, cancel, events and checkpoints, always scoped
to one tenant (another tenant's job is simply not found), in OpenAI's object shapes.

Every change of a job's status, here and in the worker, is a compare-and-set on the status it expects
(``transition``): a job in a final status is never moved again, and the move into a final status runs the
``OnFinal`` hook in the same transaction (the gateway charges the job there, exactly once)."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from adapters.errors import InvalidJobRequest, NotFound
from adapters.job_objects import CheckpointList, EventList, FineTuningJobOut, JobCheckpointOut, JobEventOut, JobList
from adapters.leases import Lease
from adapters.lineage import Lineage
from adapters.pagination import keyset_page
from adapters.recipe import LoraShape, TrainingRecipe
from adapters.store import FineTuningJob, JobCheckpoint, JobEvent, JobStatus, utcnow

FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
WAITING = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED)
UNFINISHED = (*WAITING, JobStatus.RUNNING)

JOB_LEASE = Lease.on(FineTuningJob, owner=FineTuningJob.worker_id)
"""A job is leased by the worker training it (``worker_id``, ``heartbeat_at``)."""

OnFinal = Callable[[Session, "FineTuningJob"], None]
"""Runs in the transaction that moves a job into a final status, with the job as it is then."""


@dataclass(frozen=True)
class JobRequest:
    """A validated request for a job (the gateway checked the files, the model and the numbers)."""

    job_id: str
    tenant_id: str
    tenant_name: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    recipe: TrainingRecipe
    """Every "auto" already chosen from the data (the LoRA layers excepted: the worker chooses them)."""
    estimated_tokens: int
    reserved_cost_nanos: int
    metadata: dict[str, str] | None
    created_at: datetime
    """When the gateway reserved the job's budget: the reservation's month is this one's."""
    lineage: Lineage | None = None
    """What the job continues (None: it trains ``model``, a base model)."""


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type_: str = "message", data: Any = None
) -> None:
    session.add(
        JobEvent(
            public_id=f"ftevent-{secrets.token_hex(12)}",
            job_id=job_id,
            created_at=utcnow(),
            level=level,
            type=type_,
            message=message,
            data=data,
        )
    )


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def transition(
    session: Session,
    job_id: str,
    *,
    expected: Collection[str],
    on_final: OnFinal,
    message: str | None = None,
    level: str = "info",
    owner: str | None = None,
    where: Collection[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """Set ``values`` on the job if its status is one of ``expected`` (as ``owner``'s, and ``where`` holds); False
    if it was not. Entering a final status stamps ``finished_at`` and runs ``on_final`` in this transaction."""
    final = values.get("status") in FINAL
    if final:
        values.setdefault("finished_at", utcnow())
    if not JOB_LEASE.move(session, job_id, expected=expected, owner=owner, where=where, **values):
        return False
    if message:
        add_event(session, job_id, message, level=level)
    if final:
        job = session.get(FineTuningJob, job_id, populate_existing=True)
        assert job is not None
        on_final(session, job)
        session.flush()  # what the hook changed on the job is written with the move, whatever the caller does next
    return True


class JobService:
    def __init__(self, sessions: sessionmaker[Session], on_final: OnFinal) -> None:
        self._sessions = sessions
        self._on_final = on_final

    def create(self, request: JobRequest) -> FineTuningJobOut:
        job = FineTuningJob(
            id=request.job_id,
            tenant_id=request.tenant_id,
            tenant_name=request.tenant_name,
            model=request.model,
            training_file=request.training_file,
            validation_file=request.validation_file,
            suffix=request.suffix,
            **request.recipe.columns(),
            status=JobStatus.VALIDATING_FILES,
            estimated_tokens=request.estimated_tokens,
            reserved_cost_nanos=request.reserved_cost_nanos,
            user_metadata=request.metadata,
            lineage=(request.lineage or Lineage(base_model=request.model)).column(),
            created_at=request.created_at,
        )
        with self._sessions.begin() as session:
            session.add(job)
            add_event(session, job.id, f"Created fine-tuning job: {job.id}")
            session.flush()
            return FineTuningJobOut.model_validate(job)

    def _own(self, session: Session, tenant_id: str, job_id: str) -> FineTuningJob:
        job = session.get(FineTuningJob, job_id)
        if job is None or job.tenant_id != tenant_id:
            raise NotFound(f"No fine-tuning job found with id '{job_id}'.", param="fine_tuning_job_id")
        return job

    def continuation(self, tenant_id: str, job_id: str, model: str) -> tuple[Lineage, LoraShape]:
        """For a job that continues ``model`` (made by the tenant's job ``job_id``): its lineage, and the LoRA
        shape it trains (the one ``model`` was trained with)."""
        with self._sessions() as session:
            job = self._own(session, tenant_id, job_id)
            return Lineage.of(job).continued_as(model), TrainingRecipe.of(job).lora

    def get(self, tenant_id: str, job_id: str) -> FineTuningJobOut:
        with self._sessions() as session:
            return FineTuningJobOut.model_validate(self._own(session, tenant_id, job_id))

    def list(self, tenant_id: str, after: str | None, limit: int) -> JobList:
        with self._sessions() as session:
            query = select(FineTuningJob).where(FineTuningJob.tenant_id == tenant_id)
            cursor = None
            if after:
                row = self._own(session, tenant_id, after)
                cursor = (row.created_at, row.id)
            keys = (FineTuningJob.created_at, FineTuningJob.id)
            jobs, more = keyset_page(session, query, keys, cursor, limit, descending=True)
        return JobList(data=[FineTuningJobOut.model_validate(job) for job in jobs], has_more=more)

    def queue(self, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """Every tenant's unfinished jobs, oldest first, with their tenant's name: what the workers have before
        them (the operator's view)."""
        with self._sessions() as session:
            jobs = session.scalars(
                select(FineTuningJob)
                .where(FineTuningJob.status.in_(UNFINISHED))
                .order_by(FineTuningJob.created_at, FineTuningJob.id)
                .limit(limit)
            )
            return [
                {
                    **FineTuningJobOut.model_validate(job).model_dump(),
                    "tenant_name": job.tenant_name,
                    "worker_id": job.worker_id,
                }
                for job in jobs
            ]

    def cancel(self, tenant_id: str, job_id: str) -> FineTuningJobOut:
        """The job is ``cancelled`` when this returns, and charged what it trained so far (its last metrics step),
        in this transaction: what the answer says, every retrieve says. A worker training it stops at its next
        heartbeat (its lease is gone) and registers nothing."""
        with self._sessions.begin() as session:
            job = self._own(session, tenant_id, job_id)
            cancelled = transition(
                session,
                job_id,
                expected=UNFINISHED,
                on_final=self._on_final,
                message="Fine-tuning job cancelled",
                status=JobStatus.CANCELLED,
            )
            session.refresh(job)
            if not cancelled:  # already final (or made final by its worker a moment ago)
                raise InvalidJobRequest(f"Job {job_id} has already {job.status}.", param="fine_tuning_job_id")
            return FineTuningJobOut.model_validate(job)

    def events(self, tenant_id: str, job_id: str, after: str | None, limit: int) -> EventList:
        with self._sessions() as session:
            self._own(session, tenant_id, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            cursor = None
            if after:  # newest first: the events older than the cursor (none if it is not one of this job's)
                named = select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.public_id == after)
                cursor = (named.scalar_subquery(),)
            events, more = keyset_page(session, query, (JobEvent.id,), cursor, limit, descending=True)
        return EventList(data=[JobEventOut.model_validate(event) for event in events], has_more=more)

    def checkpoints(self, tenant_id: str, job_id: str, after: str | None, limit: int) -> CheckpointList:
        with self._sessions() as session:
            self._own(session, tenant_id, job_id)
            query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
            cursor = session.get(JobCheckpoint, after) if after else None
            if after and (cursor is None or cursor.job_id != job_id):
                return CheckpointList.of([], False)  # not one of this job's checkpoints: nothing after it
            keys = (JobCheckpoint.step_number, JobCheckpoint.id)
            after_key = (cursor.step_number, cursor.id) if cursor else None
            rows, more = keyset_page(session, query, keys, after_key, limit, descending=True)
        return CheckpointList.of([JobCheckpointOut.model_validate(row) for row in rows], more)
