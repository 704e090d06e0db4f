"""``llmaas worker``: a fine-tuning worker (claims queued jobs from the database and trains them), and the
supervisor that keeps one running beside ``llmaas serve``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import typer

from gateway.cli import common

WORKER_COMMAND = [sys.executable, "-m", "gateway.cli", "worker", "--exit-with-parent"]


class WorkerSupervisor:
    """The fine-tuning worker beside the gateway (``LLMAAS_EMBEDDED_WORKER=false`` to run workers apart): a
    child process, started again with backoff whenever it dies, until the gateway stops."""

    def __init__(self, command: list[str] = WORKER_COMMAND, max_backoff_seconds: float = 60.0) -> None:
        self._command = command
        self._max_backoff = max_backoff_seconds
        self.starts = 0
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="llmaas-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            self._process = subprocess.Popen(self._command)
            self.starts += 1
            code = self._process.wait()
            if self._stopping.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, self._max_backoff)
            logging.getLogger(__name__).error("the fine-tuning worker exited (%s); restarting in %.0f s", code, backoff)
            self._stopping.wait(backoff)

    def stop(self) -> None:
        self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._thread.join(timeout=5)


def worker(
    exit_with_parent: bool = typer.Option(False, help="Stop when the process that started this one exits."),
) -> None:
    """Run a fine-tuning worker: claims queued jobs from the database and trains them (LoRA)."""
    from adapters.base_models import trainable_models
    from adapters.worker import Worker
    from engine.hardware import detect, resolve_dtype
    from gateway.app import adapter_registry, file_store, job_hook, price_book
    from gateway.bootstrap import prepare_model
    from gateway.private_files import keep_private

    keep_private()
    settings, engine_settings = common.settings().gateway, common.settings().engine
    logging.basicConfig(level=settings.log_level.upper())
    # Training takes whatever CPU the engine leaves: every core when nobody is served, little when they are.
    os.nice(settings.training_nice)
    database = common.database()
    base_models = {model: prepare_model(engine_settings) for model in trainable_models(engine_settings)}
    runner = Worker(
        database.sessions,
        adapter_registry(database, settings),
        file_store(database, settings).read,
        base_models,
        on_final=job_hook(price_book(settings)),
        training_threads=settings.training_threads,
        bf16=resolve_dtype(engine_settings.dtype, detect()) == "bfloat16",  # the engine's choice, for the same CPU
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: runner.stop())
    if exit_with_parent:
        _stop_with_parent(runner.stop)
    runner.run()


def _stop_with_parent(stop: Callable[[], None]) -> None:
    """uvicorn ends `serve` by re-raising the signal it caught, so `serve` cannot always stop us itself."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        stop()

    threading.Thread(target=watch, daemon=True).start()
