"""The adapter registry: which fine-tuned models exist, whose they are, and where their weights lie.

Weights live under ``<store>/<job id>/``; the job id is ours (``ftjob-`` + hex), so no path ever comes from
user input. Names follow OpenAI: ``ft:<base>:<tenant>:<suffix>:<short id>``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from adapters.store import Adapter, utcnow
from engine.protocol import AdapterRef


@dataclass(frozen=True)
class AdapterRecord:
    id: int
    name: str
    tenant_id: str
    base_model: str
    job_id: str
    path: Path
    created_at: datetime
    parent: str | None = None
    """The fine-tuned model it was trained from (None: from its base model)."""

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(name=self.name, int_id=self.id, path=self.path)


def model_name(base_model: str, tenant_name: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base_model}:{tenant_name}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


CHECKPOINT_MARK = ":ckpt-step-"


def checkpoint_name(model: str, step: int) -> str:
    """OpenAI's name of a job's checkpoint: its fine-tuned model's name and the step."""
    return f"{model}{CHECKPOINT_MARK}{step}"


def lineage(name: str) -> list[str]:
    """The model a name denotes and what it was made from, nearest first: a checkpoint, its fine-tuned model, its
    base model (the inverse of ``model_name`` and ``checkpoint_name``; tenant names, suffixes and short ids hold no
    ``:``, so a base model's id may). Any other name is its own lineage."""
    names = [name]
    model, mark, step = name.rpartition(CHECKPOINT_MARK)
    if mark and step.isdigit() and model.startswith("ft:"):
        names.append(model)
    else:
        model = name
    parts = model.removeprefix("ft:").rsplit(":", 3)
    if model.startswith("ft:") and len(parts) == 4 and parts[0]:
        names.append(parts[0])
    return names


class AdapterRegistry:
    def __init__(self, sessions: sessionmaker[Session], store_dir: Path) -> None:
        self._sessions = sessions
        self.store_dir = store_dir

    def job_dir(self, job_id: str) -> Path:
        if not job_id.startswith("ftjob-") or not job_id[6:].isalnum():
            raise ValueError(f"not a job id: {job_id!r}")
        return self.store_dir / job_id

    def _record(self, row: Adapter) -> AdapterRecord:
        return AdapterRecord(
            id=row.id,
            name=row.name,
            tenant_id=row.tenant_id,
            base_model=row.base_model,
            job_id=row.job_id,
            path=self.store_dir / row.path,
            created_at=row.created_at,
            parent=row.parent,
        )

    def register(
        self,
        session: Session,
        *,
        name: str,
        tenant_id: str,
        base_model: str,
        job_id: str,
        adapter_dir: Path,
        parent: str | None = None,
    ) -> AdapterRecord:
        """Add the adapter in the caller's transaction (the one that marks its job succeeded); ``parent``: the
        fine-tuned model its job continued."""
        row = Adapter(
            name=name,
            tenant_id=tenant_id,
            base_model=base_model,
            job_id=job_id,
            parent=parent,
            path=str(adapter_dir.relative_to(self.store_dir)),
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return self._record(row)

    def get(self, name: str, tenant_id: str) -> AdapterRecord | None:
        """The tenant's adapter of that name; another tenant's is as absent as a missing one."""
        with self._sessions() as session:
            row = session.scalar(select(Adapter).where(Adapter.name == name, Adapter.tenant_id == tenant_id))
            return self._record(row) if row else None

    def for_tenant(self, tenant_id: str) -> list[AdapterRecord]:
        """The tenant's fine-tuned models (not their checkpoints, which are served but not listed)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(Adapter)
                .where(Adapter.tenant_id == tenant_id, Adapter.name.not_like(f"%{CHECKPOINT_MARK}%"))
                .order_by(Adapter.id)
            )
            return [self._record(row) for row in rows]

    def delete(
        self, name: str, tenant_id: str, in_transaction: Callable[[Session, list[AdapterRecord]], None] | None = None
    ) -> list[AdapterRecord]:
        """Delete the tenant's model of that name, and its checkpoints with it (a checkpoint's name: that checkpoint
        alone), rows and weights; returns what was deleted. ``in_transaction`` runs in the deleting transaction
        (the gateway's audit entry)."""
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(Adapter).where(
                    Adapter.tenant_id == tenant_id,
                    (Adapter.name == name) | Adapter.name.startswith(name + CHECKPOINT_MARK, autoescape=True),
                )
            ).all()
            records = [self._record(row) for row in rows]
            for row in rows:
                session.delete(row)
            if records and in_transaction is not None:
                in_transaction(session, records)
        for record in records:
            if CHECKPOINT_MARK in record.name:
                shutil.rmtree(record.path, ignore_errors=True)
            else:  # the job's dir: the adapter, its checkpoints, and what training left there
                self.remove_job_dirs([record.job_id])
        return records

    def remove_for_tenant(self, session: Session, tenant_id: str) -> list[AdapterRecord]:
        """Delete every adapter row of the tenant in the caller's transaction; the caller then removes the
        weights (``remove_job_dirs``) once it has committed."""
        rows = session.scalars(select(Adapter).where(Adapter.tenant_id == tenant_id)).all()
        records = [self._record(row) for row in rows]
        session.execute(delete(Adapter).where(Adapter.tenant_id == tenant_id))
        return records

    def remove_job_dirs(self, job_ids: Iterable[str]) -> None:
        """Remove what these jobs wrote to the store (adapters, checkpoints, staging)."""
        for job_id in job_ids:
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
