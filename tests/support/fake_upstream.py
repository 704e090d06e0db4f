"""An instant stand-in for a vLLM OpenAI server (``bench/fake_upstream.py``, the proxy-overhead benchmark's
model server, run here as a script, never imported) in its own process, and what it says it served."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import REPO
from tests.support.gateway_process import wait_ready

FAKE_UPSTREAM = [sys.executable, str(REPO / "bench" / "fake_upstream.py")]


@contextmanager
def fake_upstream(port: int, model_dir: Path, log: Path, **options: str) -> Iterator[subprocess.Popen[bytes]]:
    """Serving ``model_dir``'s model on ``port`` (``options``: its flags, ``seconds_per_token="0.05"``) until the
    block ends, then killed."""
    command = [*FAKE_UPSTREAM, "--port", str(port), "--root", str(model_dir)]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", value]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log, seconds=30)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def stats(port: int) -> dict[str, Any]:
    """What it served (per model), the adapters it holds and how many it loaded."""
    result: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/stats").json()
    return result
