"""The fine-tuning worker: claims queued jobs from the database, trains them with ``adapters.training`` (DPO jobs:
``adapters.preference``) in this process (never in the gateway's event loop), heartbeats, honours cancellation
within seconds, and registers the result as a servable adapter. A job that continues a fine-tuned model
(``adapters.lineage``) starts from a copy of that model's adapter, taken into its own directory when it starts.
What a job that does not succeed wrote (its adapter, checkpoints) is removed: a cancelled job, a failed one, or one
whose tenant was deleted while it trained leaves nothing behind.

Claiming is safe with any number of workers (``adapters.leases``: ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL, then a compare-and-set ``UPDATE``). What a job trains on is its recipe (``adapters.recipe``); its
progress is recorded by ``adapters.job_progress``. A job whose worker stops heartbeating for ``dead_after`` seconds is
marked ``failed`` (code ``worker_died``) by any live worker: it is not requeued, because a job that
crashed its worker would crash the next one too; the tenant can create it again.

Every status change is a compare-and-set on the status this worker expects, as the owner it claimed
(``adapters.jobs.transition``): a job that was cancelled, or failed as dead while this worker could not reach
the database, is never moved again; the worker drops its result instead. The move into a final status
registers the adapter (on success) and charges the job (``on_final``) in one transaction. Database errors
anywhere are logged and retried with backoff; the loop never dies of one."""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from adapters.datasets import Dataset
from adapters.job_inputs import FileReader, JobFailed, load_datasets
from adapters.job_progress import JobProgress, metrics_text
from adapters.jobs import JOB_LEASE, UNFINISHED, WAITING, OnFinal, add_event, transition
from adapters.lineage import PARENT_WEIGHTS, Lineage
from adapters.preference import train_dpo
from adapters.recipe import TrainingRecipe
from adapters.registry import AdapterRegistry, checkpoint_name, model_name
from adapters.store import FineTuningJob, JobStatus, utcnow
from adapters.training import TrainingCancelled, TrainingResult, TrainingSpec, train_lora

logger = logging.getLogger(__name__)

TRAINING_FAILED = (
    "Training failed because of an error on the server (logged there with this job's id). Create the job again, "
    "or ask the operator if it keeps failing."
)
"""What a tenant sees of an unexpected failure: a category and this message, never the exception's own text."""


class Worker:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: AdapterRegistry,
        read_file: FileReader,
        base_models: Mapping[str, Path],
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
        """A waiting job no worker holds, now this one's (its status moves when its files are read)."""
        with self._sessions.begin() as session:
            return JOB_LEASE.claim(session, self.worker_id, utcnow(), free=WAITING)

    def fail_dead_jobs(self) -> None:
        horizon = utcnow() - timedelta(seconds=self._dead_after)
        with self._sessions.begin() as session:
            dead = JOB_LEASE.expired_ids(session, UNFINISHED, horizon)
        for job_id in dead:
            with self._sessions.begin() as session:
                failed = transition(
                    session,
                    job_id,
                    expected=UNFINISHED,
                    where=JOB_LEASE.expired(horizon),  # a heartbeat that came meanwhile wins
                    on_final=self._on_final,
                    message="The worker running this job stopped responding",
                    level="error",
                    status=JobStatus.FAILED,
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
                    mine = JOB_LEASE.heartbeat_of(session, job_id, self.worker_id, utcnow(), statuses=UNFINISHED)
                if not mine:  # cancelled, failed as dead by another worker, or deleted: stop training
                    cancel.set()
                    return
            except Exception:  # the next beat tries again; too long without one and the job fails as dead
                logger.warning("heartbeat of %s failed", job_id, exc_info=True)

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

    def _move(self, job_id: str, expected: tuple[str, ...], message: str, **values: Any) -> bool:
        """Compare-and-set the job as its owner; False when it was changed under us (we then stop)."""

        def change() -> bool:
            with self._sessions.begin() as session:
                return transition(
                    session,
                    job_id,
                    expected=expected,
                    owner=self.worker_id,
                    on_final=self._on_final,
                    message=message,
                    level="error" if values.get("status") == JobStatus.FAILED else "info",
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
        try:
            train, validation = load_datasets(self._read_file, job)
            if not self._move(job_id, WAITING, "Files validated, moving job to queued state", status=JobStatus.QUEUED):
                return
            base_model = Lineage.of(job).base_model
            base_dir = self._base_models.get(base_model)
            if base_dir is None:
                raise JobFailed("model_not_available", f"The base model '{base_model}' is not served here.", "model")
            started = {"status": JobStatus.RUNNING, "started_at": utcnow()}
            if not self._move(job_id, (JobStatus.QUEUED,), "Fine-tuning job started", **started):
                return
            result = self._train(job, base_dir, train, validation, cancel)
        except TrainingCancelled as stopped:
            if cancel.is_set():  # cancelled, or its tenant deleted: nothing it wrote is kept
                stop = {"status": JobStatus.CANCELLED, "trained_tokens": stopped.trained_tokens}
                self._move(job_id, UNFINISHED, "Fine-tuning job cancelled", **stop)
                self._registry.remove_job_dirs([job_id])
            else:  # the worker is stopping: another one takes the job from the start
                requeue = {"status": JobStatus.QUEUED, "worker_id": None, "started_at": None}
                self._move(job_id, UNFINISHED, "The worker stopped; job requeued", **requeue)
            return
        except JobFailed as exc:
            self._move(job_id, UNFINISHED, exc.message, status=JobStatus.FAILED, error=exc.error)
            self._registry.remove_job_dirs([job_id])
            return
        except Exception:
            logger.exception("fine-tuning job %s failed", job_id)  # the details stay in the server's log
            error = {"code": "training_failed", "message": TRAINING_FAILED, "param": None}
            self._move(job_id, UNFINISHED, TRAINING_FAILED, status=JobStatus.FAILED, error=error)
            self._registry.remove_job_dirs([job_id])
            return
        self._succeed(job, result)

    def _succeed(self, job: FineTuningJob, result: TrainingResult) -> None:
        """Register the adapter, mark the job succeeded and charge it: one transaction, or nothing."""
        name = model_name(Lineage.of(job).base_model, job.tenant_name, job.suffix, job.id)
        lora = TrainingRecipe.of(job).lora.model_copy(update={"layers": result.lora_layers})

        def change() -> bool:
            with self._sessions.begin() as session:
                succeeded = transition(
                    session,
                    job.id,
                    expected=(JobStatus.RUNNING,),
                    owner=self.worker_id,
                    on_final=self._on_final,
                    message=f"The job has successfully completed; new model: {name}",
                    status=JobStatus.SUCCEEDED,
                    fine_tuned_model=name,
                    trained_tokens=result.trained_tokens,
                    lora=lora.column(),
                )
                if succeeded:
                    self._register(session, job, name, result)
                return succeeded

        if not self._persist(change, f"completing job {job.id}"):
            logger.info("job %s was changed by someone else while it trained; its result is dropped", job.id)
            self._registry.remove_job_dirs([job.id])

    def _register(self, session: Session, job: FineTuningJob, name: str, result: TrainingResult) -> None:
        """The trained adapter, and each checkpoint as its own model, servable (in the caller's transaction)."""
        lineage = Lineage.of(job)
        adapters = [(name, result.adapter_dir)]
        adapters += [(checkpoint_name(name, c.step), c.path) for c in result.checkpoints]
        for adapter_name, adapter_dir in adapters:
            self._registry.register(
                session,
                name=adapter_name,
                tenant_id=job.tenant_id,
                base_model=lineage.base_model,
                job_id=job.id,
                adapter_dir=adapter_dir,
                parent=lineage.parents[0] if lineage.continues else None,
            )
        add_event(session, job.id, f"Kept the checkpoint of step {result.chosen.step}: {metrics_text(result.chosen)}")

    def _copy_parent(self, job: FineTuningJob, lineage: Lineage) -> Path:
        """The job's own copy of the adapter it continues (``JobFailed`` when that model was deleted meanwhile)."""
        parent = self._registry.get(lineage.parent, job.tenant_id)
        if parent is None:
            message = f"The model '{lineage.parent}' this job continues was deleted before the job started."
            raise JobFailed("model_not_found", message, "model")
        copy = self._registry.job_dir(job.id) / PARENT_WEIGHTS
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(parent.path, copy)
        return copy

    def _train(
        self, job: FineTuningJob, base_dir: Path, train: Dataset, validation: Dataset | None, cancel: threading.Event
    ) -> TrainingResult:
        recipe, lineage = TrainingRecipe.of(job), Lineage.of(job)
        spec = TrainingSpec(
            base_model_dir=base_dir,
            train=train,
            validation=validation,
            output_dir=self._registry.job_dir(job.id),
            n_epochs=recipe.hyperparameters.n_epochs,
            batch_size=recipe.hyperparameters.batch_size,
            learning_rate=recipe.learning_rate,
            seed=recipe.seed,
            lora=recipe.lora.spec(),
            keep=recipe.keep_checkpoint,
            threads=self._training_threads,
            bf16=self._bf16,
            start_from=self._copy_parent(job, lineage) if lineage.continues else None,
        )
        name = model_name(lineage.base_model, job.tenant_name, job.suffix, job.id)
        progress = JobProgress(self._sessions, job.id, self.worker_id, name)

        def should_stop() -> bool:
            return cancel.is_set() or self._stop.is_set()

        trainer = functools.partial(train_dpo, beta=recipe.beta) if recipe.method == "dpo" else train_lora
        started = time.perf_counter()
        result = trainer(
            spec, on_metrics=progress.on_metrics, on_checkpoint=progress.on_checkpoint, should_stop=should_stop
        )
        logger.info("job %s trained %d tokens in %.1f s", job.id, result.trained_tokens, time.perf_counter() - started)
        return result
