"""A training job's progress, recorded by the worker that owns it while it trains: a ``metrics`` event per step
(and the tokens trained so far, which the job is charged if it ends without this worker), a checkpoint row per
epoch. Nothing is written for a job that is no longer this worker's or was deleted meanwhile, and a database
error here is logged while training goes on."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from adapters.jobs import add_event
from adapters.leases import compare_and_set
from adapters.registry import checkpoint_name
from adapters.store import FineTuningJob, JobCheckpoint, JobStatus, utcnow
from adapters.training import Checkpoint, Scores, StepMetrics

logger = logging.getLogger(__name__)


class JobProgress:
    """``on_metrics`` and ``on_checkpoint`` of one job's training run, written as its owner ``worker_id``."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, worker_id: str, model_name: str) -> None:
        self._sessions = sessions
        self._job_id = job_id
        self._worker_id = worker_id
        self._model_name = model_name

    def _mine(self) -> tuple[ColumnElement[bool], ...]:
        return (
            FineTuningJob.id == self._job_id,
            FineTuningJob.worker_id == self._worker_id,
            FineTuningJob.status == JobStatus.RUNNING,
        )

    def _write(self, what: str, write: Callable[[Session], None]) -> None:
        """``write`` in a transaction if the job still runs as this worker's, its row locked until the commit: no
        progress is written for a job cancelled or deleted meanwhile (a cancel or its tenant's deletion locks the
        row first, or waits). A database error while recording progress is logged; training goes on."""
        try:
            with self._sessions.begin() as session:
                if session.scalar(select(FineTuningJob.id).where(*self._mine()).with_for_update()) is not None:
                    write(session)
        except Exception:
            logger.warning("writing %s failed; training goes on", what, exc_info=True)

    def on_metrics(self, metrics: StepMetrics) -> None:
        data = {
            "step": metrics.step,
            "total_steps": metrics.total_steps,
            "epoch": metrics.epoch,
            "train_loss": metrics.train_loss,
            **_validation_data(metrics.validation),
        }
        if metrics.train_mean_token_accuracy is not None:
            data["train_mean_token_accuracy"] = metrics.train_mean_token_accuracy
        message = f"Step {metrics.step}/{metrics.total_steps}: training loss={metrics.train_loss:.4f}"
        if metrics.validation is not None:
            message += ", " + metrics.validation.text()

        def write(session: Session) -> None:
            add_event(session, self._job_id, message, type_="metrics", data=data)
            # So far trained: what the job is charged if it ends without this worker (failed as dead).
            compare_and_set(session, FineTuningJob, self._mine(), {"trained_tokens": metrics.trained_tokens})

        self._write("a metrics event", write)

    def on_checkpoint(self, checkpoint: Checkpoint) -> None:
        metrics = {"step": checkpoint.step, "train_loss": checkpoint.train_loss}
        row = JobCheckpoint(
            id=f"ftckpt_{secrets.token_hex(12)}",
            job_id=self._job_id,
            step_number=checkpoint.step,
            metrics={**metrics, **_validation_data(checkpoint.validation)},
            fine_tuned_model_checkpoint=checkpoint_name(self._model_name, checkpoint.step),
            created_at=utcnow(),
        )
        self._write("a checkpoint row", lambda session: session.add(row))


def _validation_data(validation: Scores | None) -> dict[str, float]:
    return validation.data() if validation is not None else {}


def metrics_text(checkpoint: Checkpoint) -> str:
    """How a checkpoint did, in words (the event that names the checkpoint a job kept)."""
    if checkpoint.validation is None:
        return f"training loss={checkpoint.train_loss:.4f} (the last; no validation file)"
    return checkpoint.validation.text()
