"""Fine-tuning jobs as the API sees them: create, list, get, cancel, events and checkpoints, always scoped
to one tenant (another tenant's job is simply not found), in OpenAI's object shapes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters.errors import InvalidJobRequest, NotFound
from adapters.store import FineTuningJob, JobCheckpoint, JobEvent, utcnow

FINAL = ("succeeded", "failed", "cancelled")


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
    seed: int | None
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    lora_rank: int
    lora_alpha: int
    lora_target_modules: tuple[str, ...]
    estimated_tokens: int
    metadata: dict[str, str] | None


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def job_object(job: FineTuningJob) -> dict[str, Any]:
    hyperparameters = dict(job.hyperparameters)
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "model": job.model,
        "created_at": _epoch(job.created_at),
        "finished_at": _epoch(job.finished_at),
        "status": job.status,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.tenant_id,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "hyperparameters": hyperparameters,
        "method": {"type": job.method, job.method: {"hyperparameters": hyperparameters}},
        "lora": dict(job.lora),
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "result_files": [],
        "seed": job.seed,
        "suffix": job.suffix,
        "estimated_finish": None,
        "integrations": [],
        "metadata": job.user_metadata,
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    return {
        "id": f"ftevent-{event.id}",
        "object": "fine_tuning.job.event",
        "created_at": _epoch(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }


def checkpoint_object(checkpoint: JobCheckpoint) -> dict[str, Any]:
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _epoch(checkpoint.created_at),
        "fine_tuning_job_id": checkpoint.job_id,
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "step_number": checkpoint.step_number,
        "metrics": checkpoint.metrics,
    }


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type_: str = "message", data: Any = None
) -> None:
    session.add(JobEvent(job_id=job_id, created_at=utcnow(), level=level, type=type_, message=message, data=data))


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


class JobService:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(self, request: JobRequest) -> dict[str, Any]:
        hyperparameters = {
            "n_epochs": request.n_epochs,
            "batch_size": request.batch_size,
            "learning_rate_multiplier": request.learning_rate_multiplier,
        }
        job = FineTuningJob(
            id=request.job_id,
            tenant_id=request.tenant_id,
            tenant_name=request.tenant_name,
            model=request.model,
            training_file=request.training_file,
            validation_file=request.validation_file,
            suffix=request.suffix,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            hyperparameters=hyperparameters,
            lora={
                "rank": request.lora_rank,
                "alpha": request.lora_alpha,
                "target_modules": list(request.lora_target_modules),
            },
            method="supervised",
            status="validating_files",
            estimated_tokens=request.estimated_tokens,
            user_metadata=request.metadata,
            created_at=utcnow(),
            cancel_requested=False,
        )
        with self._sessions.begin() as session:
            session.add(job)
            add_event(session, job.id, f"Created fine-tuning job: {job.id}")
            session.flush()
            return job_object(job)

    def _own(self, session: Session, tenant_id: str, job_id: str) -> FineTuningJob:
        job = session.get(FineTuningJob, job_id)
        if job is None or job.tenant_id != tenant_id:
            raise NotFound(f"No fine-tuning job found with id '{job_id}'.", param="fine_tuning_job_id")
        return job

    def get(self, tenant_id: str, job_id: str) -> dict[str, Any]:
        with self._sessions() as session:
            return job_object(self._own(session, tenant_id, job_id))

    def list(self, tenant_id: str, after: str | None, limit: int) -> dict[str, Any]:
        with self._sessions() as session:
            query = select(FineTuningJob).where(FineTuningJob.tenant_id == tenant_id)
            if after:
                cursor = self._own(session, tenant_id, after)
                query = query.where(
                    (FineTuningJob.created_at < cursor.created_at)
                    | ((FineTuningJob.created_at == cursor.created_at) & (FineTuningJob.id < cursor.id))
                )
            query = query.order_by(FineTuningJob.created_at.desc(), FineTuningJob.id.desc()).limit(limit + 1)
            jobs = list(session.scalars(query))
        return {"object": "list", "data": [job_object(j) for j in jobs[:limit]], "has_more": len(jobs) > limit}

    def cancel(self, tenant_id: str, job_id: str) -> dict[str, Any]:
        """Jobs not yet running are cancelled at once; a running job is stopped by its worker within
        seconds (the returned job may still say ``running``)."""
        with self._sessions.begin() as session:
            job = self._own(session, tenant_id, job_id)
            if job.status in FINAL:
                raise InvalidJobRequest(f"Job {job_id} has already {job.status}.", param="fine_tuning_job_id")
            if job.status == "running":
                job.cancel_requested = True
                add_event(session, job.id, "Cancellation requested")
            else:
                job.status = "cancelled"
                job.finished_at = utcnow()
                add_event(session, job.id, "Fine-tuning job cancelled")
            session.flush()
            return job_object(job)

    def events(self, tenant_id: str, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        with self._sessions() as session:
            self._own(session, tenant_id, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if after:
                query = query.where(JobEvent.id < int(after.removeprefix("ftevent-") or 0))
            events = list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
        return {"object": "list", "data": [event_object(e) for e in events[:limit]], "has_more": len(events) > limit}

    def checkpoints(self, tenant_id: str, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        with self._sessions() as session:
            self._own(session, tenant_id, job_id)
            query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
            rows = list(session.scalars(query.order_by(JobCheckpoint.step_number.desc())))
        if after:
            ids = [c.id for c in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        data = [checkpoint_object(c) for c in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    # -- charging: the gateway settles each finished job's tokens once ------------------------------------
    def unsettled_finished(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._sessions() as session:
            query = select(FineTuningJob).where(FineTuningJob.status.in_(FINAL), FineTuningJob.settled_at.is_(None))
            return [
                job_object(j) | {"estimated_tokens": j.estimated_tokens} for j in session.scalars(query.limit(limit))
            ]

    def mark_settled(self, job_id: str) -> bool:
        """True for the one caller that settles this job (compare-and-set)."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == job_id, FineTuningJob.settled_at.is_(None))
                .values(settled_at=utcnow())
            )
            return bool(result.rowcount)
