"""The fine-tuning worker: claims queued jobs from the database, trains them with ``adapters.training`` in
this process (never in the gateway's event loop), heartbeats, honours cancellation within seconds, and
registers the result as a servable adapter. What a job that does not succeed wrote (its adapter, checkpoints) is
removed: a cancelled job, a failed one, or one whose tenant was deleted while it trained leaves nothing behind.

Claiming is safe with any number of workers: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, a
compare-and-set ``UPDATE`` on SQLite. A job whose worker stops heartbeating for ``dead_after`` seconds is
marked ``failed`` (code ``worker_died``) by any live worker: it is not requeued, because a job that
crashed its worker would crash the next one too; the tenant can create it again.

Every status change is a compare-and-set on the status this worker expects, as the owner it claimed
(``adapters.jobs.transition``): a job that was cancelled, or failed as dead while this worker could not reach
the database, is never moved again; the worker drops its result instead. The move into a final status
registers the adapter (on success) and charges the job (``on_final``) in one transaction. Database errors
anywhere are logged and retried with backoff; the loop never dies of one."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters.datasets import Dataset, DatasetError, parse_jsonl
from adapters.hyperparameters import BASE_LEARNING_RATE
from adapters.jobs import FINAL, WAITING, OnFinal, add_event, transition
from adapters.registry import AdapterRegistry, checkpoint_name, model_name
from adapters.store import FineTuningJob, JobCheckpoint, utcnow
from adapters.training import (
    Checkpoint,
    LoraSpec,
    StepMetrics,
    TrainingCancelled,
    TrainingResult,
    TrainingSpec,
    Validation,
    train_lora,
)

logger = logging.getLogger(__name__)

FileReader = Callable[[str, str], bytes | None]
"""(tenant id, file id) -> the file's bytes, or None when it is gone."""


TRAINING_FAILED = (
    "Training failed because of an error on the server (logged there with this job's id). Create the job again, "
    "or ask the operator if it keeps failing."
)
"""What a tenant sees of an unexpected failure: a category and this message, never the exception's own text."""


class JobFailed(Exception):
    """A failure the tenant should see as it is: its ``code`` and ``message`` are ours, written for tenants."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


class Worker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: AdapterRegistry,
        read_file: FileReader,
        base_models: dict[str, Path],
        on_final: OnFinal,
        *,
        heartbeat_seconds: float = 2.0,
        dead_after_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        move_attempts: int = 6,
        training_threads: int | None = None,
        bf16: bool = False,
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._read_file = read_file
        self._base_models = base_models
        self._on_final = on_final
        self._heartbeat = heartbeat_seconds
        self._dead_after = dead_after_seconds
        self._poll = poll_seconds
        self._max_backoff = max_backoff_seconds
        self._move_attempts = move_attempts
        self._training_threads = training_threads
        self._bf16 = bf16
        self.worker_id = f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self._stop = threading.Event()

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until ``stop()``: a job being trained when it comes goes back to the queue."""
        logger.info("fine-tuning worker %s started", self.worker_id)
        backoff = self._poll
        while not self._stop.is_set():
            try:
                worked = self.run_once() is not None
                backoff = self._poll
            except Exception:
                logger.exception("the fine-tuning worker's loop failed; retrying in %.0f s", backoff)
                worked = False
                backoff = min(backoff * 2, self._max_backoff)
            if not worked:
                self._stop.wait(backoff)

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> str | None:
        """Claim and process one job, if any."""
        self.fail_dead_jobs()
        job_id = self.claim()
        if job_id is not None:
            self.process(job_id)
        return job_id

    # -- claiming ---------------------------------------------------------------------------------------------
    def claim(self) -> str | None:
        waiting = FineTuningJob.status.in_(WAITING)
        with self._sessions.begin() as session:
            now = utcnow()
            if session.get_bind().dialect.name == "postgresql":
                query = (
                    select(FineTuningJob)
                    .where(waiting, FineTuningJob.worker_id.is_(None))
                    .order_by(FineTuningJob.created_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                job = session.scalar(query)
                if job is None:
                    return None
                job.worker_id, job.heartbeat_at = self.worker_id, now
                return job.id
            candidates = session.scalars(
                select(FineTuningJob.id)
                .where(waiting, FineTuningJob.worker_id.is_(None))
                .order_by(FineTuningJob.created_at)
                .limit(5)
            ).all()
            for job_id in candidates:
                claimed = session.execute(
                    update(FineTuningJob)
                    .where(FineTuningJob.id == job_id, FineTuningJob.worker_id.is_(None), waiting)
                    .values(worker_id=self.worker_id, heartbeat_at=now)
                )
                if claimed.rowcount:
                    return job_id
        return None

    def fail_dead_jobs(self) -> None:
        horizon = utcnow() - timedelta(seconds=self._dead_after)
        unfinished = (*WAITING, "running")
        stale = (FineTuningJob.worker_id.is_not(None), FineTuningJob.heartbeat_at < horizon)
        with self._sessions.begin() as session:
            dead = session.scalars(select(FineTuningJob.id).where(FineTuningJob.status.in_(unfinished), *stale)).all()
        for job_id in dead:
            with self._sessions.begin() as session:
                failed = transition(
                    session,
                    job_id,
                    expected=unfinished,
                    where=stale,  # a heartbeat that came meanwhile wins
                    on_final=self._on_final,
                    message="The worker running this job stopped responding",
                    level="error",
                    status="failed",
                    error={
                        "code": "worker_died",
                        "message": "The worker running this job stopped responding; create the job again.",
                        "param": None,
                    },
                )
            if failed:  # what the dead worker wrote is of no use
                self._registry.remove_job_dirs([job_id])

    # -- one job ----------------------------------------------------------------------------------------------
    def process(self, job_id: str) -> None:
        cancel = threading.Event()
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, cancel, done), daemon=True)
        beat.start()
        try:
            self._process(job_id, cancel)
        finally:
            done.set()
            beat.join()

    def _beat(self, job_id: str, cancel: threading.Event, done: threading.Event) -> None:
        while not done.wait(self._heartbeat):
            try:
                with self._sessions.begin() as session:
                    job = session.get(FineTuningJob, job_id)
                    if job is None or job.status in FINAL or job.worker_id != self.worker_id or job.cancel_requested:
                        cancel.set()  # cancelled, failed as dead by another worker, or deleted: stop training
                        return
                    job.heartbeat_at = utcnow()
            except Exception:  # the next beat tries again; too long without one and the job fails as dead
                logger.warning("heartbeat of %s failed", job_id, exc_info=True)

    def _still_mine(self, session: Session, job_id: str) -> bool:
        """Whether the job still exists as this worker's, its row locked until the caller commits: progress is
        never written for a job deleted meanwhile (its tenant's deletion locks the row first, or waits)."""
        query = select(FineTuningJob.id).where(FineTuningJob.id == job_id, FineTuningJob.worker_id == self.worker_id)
        return session.scalar(query.with_for_update()) is not None

    def _persist(self, change: Callable[[], bool], what: str) -> bool:
        """Run a status change, retrying a failing database with backoff (the compare-and-set makes a retry
        safe): a job's final status and charge should not wait for the reaper to decide them."""
        for attempt in range(self._move_attempts):
            try:
                return change()
            except Exception:
                if attempt + 1 == self._move_attempts:
                    raise
                logger.warning("%s failed (attempt %d); retrying", what, attempt + 1, exc_info=True)
                self._stop.wait(min(0.5 * 2**attempt, self._max_backoff))
        return False

    def _move(self, job_id: str, expected: tuple[str, ...], message: str, **values: object) -> bool:
        """Compare-and-set the job as its owner; False when it was changed under us (we then stop)."""

        def change() -> bool:
            with self._sessions.begin() as session:
                return transition(
                    session,
                    job_id,
                    expected=expected,
                    where=(FineTuningJob.worker_id == self.worker_id,),
                    on_final=self._on_final,
                    message=message,
                    level="error" if values.get("status") == "failed" else "info",
                    **values,
                )

        moved = self._persist(change, f"moving job {job_id} to {values.get('status')}")
        if not moved:
            logger.info("job %s was changed by someone else (cancelled or failed); leaving it", job_id)
        return moved

    def _process(self, job_id: str, cancel: threading.Event) -> None:
        with self._sessions() as session:
            job = session.get(FineTuningJob, job_id)
            if job is None:
                return
            session.expunge(job)
        unfinished = (*WAITING, "running")
        try:
            if job.cancel_requested:
                self._move(job_id, unfinished, "Fine-tuning job cancelled", status="cancelled")
                return
            train, validation = self._load_files(job)
            if not self._move(job_id, WAITING, "Files validated, moving job to queued state", status="queued"):
                return
            base_dir = self._base_models.get(job.model)
            if base_dir is None:
                raise JobFailed("model_not_available", f"The base model '{job.model}' is not served here.", "model")
            if not self._move(job_id, ("queued",), "Fine-tuning job started", status="running", started_at=utcnow()):
                return
            result = self._train(job, base_dir, train, validation, cancel)
        except TrainingCancelled as stopped:
            if cancel.is_set():  # cancelled, or its tenant deleted: nothing it wrote is kept
                self._move(
                    job_id,
                    unfinished,
                    "Fine-tuning job cancelled",
                    status="cancelled",
                    trained_tokens=stopped.trained_tokens,
                )
                self._registry.remove_job_dirs([job_id])
            else:  # the worker is stopping: another one takes the job from the start
                self._move(
                    job_id,
                    unfinished,
                    "The worker stopped; job requeued",
                    status="queued",
                    worker_id=None,
                    started_at=None,
                )
            return
        except JobFailed as exc:
            self._move(job_id, unfinished, exc.error["message"], status="failed", error=exc.error)
            self._registry.remove_job_dirs([job_id])
            return
        except Exception:
            logger.exception("fine-tuning job %s failed", job_id)  # the details stay in the server's log
            error = {"code": "training_failed", "message": TRAINING_FAILED, "param": None}
            self._move(job_id, unfinished, TRAINING_FAILED, status="failed", error=error)
            self._registry.remove_job_dirs([job_id])
            return
        self._succeed(job, result)

    def _succeed(self, job: FineTuningJob, result: TrainingResult) -> None:
        """Register the adapter, mark the job succeeded and charge it: one transaction, or nothing."""
        name = model_name(job.model, job.tenant_name, job.suffix, job.id)

        def change() -> bool:
            with self._sessions.begin() as session:
                succeeded = transition(
                    session,
                    job.id,
                    expected=("running",),
                    where=(FineTuningJob.worker_id == self.worker_id,),
                    on_final=self._on_final,
                    message=f"The job has successfully completed; new model: {name}",
                    status="succeeded",
                    fine_tuned_model=name,
                    trained_tokens=result.trained_tokens,
                    lora={**job.lora, "layers": result.lora_layers},
                )
                if succeeded:
                    self._registry.register(
                        session,
                        name=name,
                        tenant_id=job.tenant_id,
                        base_model=job.model,
                        job_id=job.id,
                        adapter_dir=result.adapter_dir,
                    )
                    for checkpoint in result.checkpoints:  # each servable as its own model
                        self._registry.register(
                            session,
                            name=checkpoint_name(name, checkpoint.step),
                            tenant_id=job.tenant_id,
                            base_model=job.model,
                            job_id=job.id,
                            adapter_dir=checkpoint.path,
                        )
                    add_event(
                        session,
                        job.id,
                        f"Kept the checkpoint of step {result.chosen.step}: {_metrics_text(result.chosen)}",
                    )
                return succeeded

        if not self._persist(change, f"completing job {job.id}"):
            logger.info("job %s was changed by someone else while it trained; its result is dropped", job.id)
            self._registry.remove_job_dirs([job.id])

    @contextlib.contextmanager
    def _tolerated(self, what: str) -> Iterator[None]:
        """A database error while recording progress is logged; training goes on."""
        try:
            yield
        except Exception:
            logger.warning("writing %s failed; training goes on", what, exc_info=True)

    def _load_files(self, job: FineTuningJob) -> tuple[Dataset, Dataset | None]:
        def load(file_id: str, param: str) -> Dataset:
            data = self._read_file(job.tenant_id, file_id)
            if data is None:
                raise JobFailed("file_not_found", f"File '{file_id}' no longer exists.", param)
            try:
                return parse_jsonl(data)
            except DatasetError as exc:  # its text is ours: the line and what is wrong with it
                raise JobFailed("invalid_training_file", f"File '{file_id}' is invalid: {exc}", param) from exc
            except Exception as exc:  # a file the parser could not cope with, whatever the reason: logged here
                logger.warning("reading file %s of job %s failed", file_id, job.id, exc_info=True)
                message = f"File '{file_id}' could not be read as training data."
                raise JobFailed("invalid_training_file", message, param) from exc

        train = load(job.training_file, "training_file")
        validation = load(job.validation_file, "validation_file") if job.validation_file else None
        return train, validation

    def _train(
        self, job: FineTuningJob, base_dir: Path, train: Dataset, validation: Dataset | None, cancel: threading.Event
    ) -> TrainingResult:
        hyper = job.hyperparameters
        lora = job.lora
        spec = TrainingSpec(
            base_model_dir=base_dir,
            train=train,
            validation=validation,
            output_dir=self._registry.job_dir(job.id),
            n_epochs=int(hyper["n_epochs"]),
            batch_size=int(hyper["batch_size"]),
            learning_rate=BASE_LEARNING_RATE * float(hyper["learning_rate_multiplier"]),
            seed=job.seed,
            lora=LoraSpec(
                rank=int(lora["rank"]),
                alpha=int(lora["alpha"]),
                target_modules=tuple(lora["target_modules"]),
                layers=None if lora.get("layers", "auto") == "auto" else int(lora["layers"]),
            ),
            keep=hyper.get("keep_checkpoint", "best"),
            threads=self._training_threads,
            bf16=self._bf16,
        )

        def on_metrics(metrics: StepMetrics) -> None:
            data = {
                "step": metrics.step,
                "total_steps": metrics.total_steps,
                "epoch": metrics.epoch,
                "train_loss": metrics.train_loss,
                "train_mean_token_accuracy": metrics.train_mean_token_accuracy,
                **_validation_data(metrics.validation),
            }
            message = f"Step {metrics.step}/{metrics.total_steps}: training loss={metrics.train_loss:.4f}"
            if metrics.validation is not None:
                message += ", " + _validation_text(metrics.validation)
            with self._tolerated("a metrics event"), self._sessions.begin() as session:
                if not self._still_mine(session, job.id):
                    return
                add_event(session, job.id, message, type_="metrics", data=data)
                # So far trained: what the job is charged if it ends without this worker (failed as dead).
                session.execute(
                    update(FineTuningJob)
                    .where(FineTuningJob.id == job.id, FineTuningJob.worker_id == self.worker_id)
                    .values(trained_tokens=metrics.trained_tokens)
                )

        def on_checkpoint(checkpoint: Checkpoint) -> None:
            name = checkpoint_name(model_name(job.model, job.tenant_name, job.suffix, job.id), checkpoint.step)
            with self._tolerated("a checkpoint row"), self._sessions.begin() as session:
                if not self._still_mine(session, job.id):
                    return
                session.add(
                    JobCheckpoint(
                        id=f"ftckpt_{secrets.token_hex(12)}",
                        job_id=job.id,
                        step_number=checkpoint.step,
                        metrics={
                            "step": checkpoint.step,
                            "train_loss": checkpoint.train_loss,
                            **_validation_data(checkpoint.validation),
                        },
                        fine_tuned_model_checkpoint=name,
                        created_at=utcnow(),
                    )
                )

        started = time.perf_counter()

        def should_stop() -> bool:
            return cancel.is_set() or self._stop.is_set()

        result = train_lora(spec, on_metrics=on_metrics, on_checkpoint=on_checkpoint, should_stop=should_stop)
        logger.info("job %s trained %d tokens in %.1f s", job.id, result.trained_tokens, time.perf_counter() - started)
        return result


def _validation_data(validation: Validation | None) -> dict[str, float]:
    if validation is None:
        return {}
    return {
        "valid_loss": validation.loss,
        "valid_mean_token_accuracy": validation.mean_token_accuracy,
        "valid_exact_match": validation.exact_match,
    }


def _validation_text(validation: Validation) -> str:
    return (
        f"validation loss={validation.loss:.4f}, token accuracy={validation.mean_token_accuracy:.3f}, "
        f"exact match={validation.exact_match:.3f}"
    )


def _metrics_text(checkpoint: Checkpoint) -> str:
    if checkpoint.validation is None:
        return f"training loss={checkpoint.train_loss:.4f} (the last; no validation file)"
    return _validation_text(checkpoint.validation)
