"""A gateway in its own process, as an operator runs it: ``llmaas serve`` (the real engine, or the upstream
backend), or ``bench/fake_gateway.py`` (the same app and server in front of the instant fake engine, the
gateway-overhead benchmark's, run as a script, never imported); and the management CLI run to its end. Settings
are ``LLMAAS_`` environment variables, and only those the test names: the caller's own ``LLMAAS_`` variables are
left out. Started, a gateway answers ``/ready``; stopped, it has had SIGTERM (a graceful drain) and a minute."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from tests.support import ADMIN_KEY, REPO

CLI = [sys.executable, "-m", "gateway.cli"]
SERVE = [*CLI, "serve"]
FAKE_GATEWAY = [sys.executable, str(REPO / "bench" / "fake_gateway.py")]
STARTUP_TIMEOUT_S = 300
Setting = str | int | float | Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env(data_dir: Path, admin_key: str | None = ADMIN_KEY, **settings: Setting) -> dict[str, str]:
    """This process's environment without its ``LLMAAS_`` variables, plus the data dir, the admin key (none:
    the gateway makes one) and ``settings`` (``drain_seconds=1`` is ``LLMAAS_DRAIN_SECONDS=1``)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LLMAAS_")}
    env["LLMAAS_DATA_DIR"] = str(data_dir)
    # Float weights and no speculation unless a test names them: tests assert exact answers and logprobs of the
    # float model decoding one token a step.
    env["LLMAAS_QUANTIZATION"] = "none"
    env["LLMAAS_SPECULATION"] = "off"
    if admin_key is not None:
        env["LLMAAS_ADMIN_KEY"] = admin_key
    env |= {f"LLMAAS_{name.upper()}": str(value) for name, value in settings.items()}
    return env


def llmaas(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The management CLI (``llmaas ARGS``) run to its end with ``env`` (``gateway_env``); its output as text."""
    return subprocess.run([*CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = STARTUP_TIMEOUT_S) -> None:
    """Until ``url`` answers 200; fails with the end of the log if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {seconds:.0f} s:\n{log.read_text()[-5000:]}")


@dataclass
class GatewayProcess:
    """One gateway's command, environment and log. ``with`` starts it and stops it; ``start`` alone leaves the
    stopping (or killing) to the test."""

    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The process last started."""
        assert self.proc is not None, "not started"
        return self.proc

    def start(self, log: Path | None = None) -> subprocess.Popen[bytes]:
        """Starts it (its output appended to ``log``, by default its own) and waits until it is ready."""
        log = log or self.log
        with log.open("ab") as out:
            command = [*self.command, "--port", str(self.port)]
            self.proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(f"{self.base}/ready", self.proc, log)
        return self.proc

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def fake_gateway(
    data_dir: Path,
    *,
    seconds_per_token: float = 0,
    admin_key: str | None = ADMIN_KEY,
    log: Path | None = None,
    **settings: Setting,
) -> GatewayProcess:
    """The real gateway in front of the instant fake engine (``seconds_per_token`` apart), on ``data_dir``
    (SQLite there unless ``database_url`` says otherwise); its log is ``gateway.log`` in ``data_dir``."""
    command = [*FAKE_GATEWAY, "--seconds-per-token", str(seconds_per_token)]
    env = gateway_env(data_dir, admin_key, **settings)
    return GatewayProcess(command, env, free_port(), log or data_dir / "gateway.log")


def served_gateway(data_dir: Path, *, log: Path | None = None, **settings: Setting) -> GatewayProcess:
    """``llmaas serve`` on ``data_dir`` with ``settings`` (the model, or ``engine="upstream"`` and its replicas)."""
    return GatewayProcess(
        SERVE, gateway_env(data_dir, ADMIN_KEY, **settings), free_port(), log or data_dir / "gateway.log"
    )


def second_model_gateway(data_dir: Path, model_dir: Path, **settings: Setting) -> GatewayProcess:
    """Another ``llmaas serve`` of the real model beside the session's, as the session's runs it (fp32, a small KV
    cache) but with no embedding model, and ``settings`` on top (what the module tests: int8, speculation...)."""
    return served_gateway(
        data_dir,
        model_path=model_dir,
        kv_cache_space_gib=1,
        log_level="warning",
        dtype="float32",
        embedding_model="",
        **settings,
    )
