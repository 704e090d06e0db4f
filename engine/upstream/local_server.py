"""vLLM's own OpenAI server on this machine, run as the upstream backend needs its replicas (a generating model
with LoRA and runtime adapter loading on, or an embedding model on the pooling runner), pinned to one CPU core
and in its own process group (so a kill takes its engine processes too); and what the server itself counts.
Nothing in the gateway imports it: the routing benchmark (``bench/routing.py``) and the end-to-end tests
(``tests/test_upstream_vllm.py``, ``tests/test_embeddings.py``) start replicas with it, as an operator would run
``vllm serve`` on each machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from engine.hardware import detect, resolve_dtype
from engine.settings import DEFAULT_BURST_SEQS, DEFAULT_MAX_NUM_SEQS
from engine.translate import STRUCTURED_OUTPUTS

START_TIMEOUT_S = 300


@dataclass
class VLLMReplica:
    port: int
    core: int
    log: Path
    model: str
    max_loras: int = 2
    max_cpu_loras: int = 4
    runner: Literal["generate", "pooling"] = "generate"
    extra_args: tuple[str, ...] = ()
    """More ``vllm serve`` flags (the prefix-routing benchmark's ``--num-gpu-blocks-override``)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, model_dir: Path) -> None:
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(self.core),  # one core each: two servers on a 2-core machine
        }
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", self.model, "--port", str(self.port), "--host", "127.0.0.1",
            "--dtype", resolve_dtype("auto", detect()), "--enforce-eager", "--runner", self.runner,
        ]  # fmt: skip
        if self.runner == "generate":  # a pooling model keeps its own context length, and takes no adapters
            command += [
                "--max-model-len", "2048", "--enable-lora", "--max-loras", str(self.max_loras),
                "--max-lora-rank", "16", "--max-cpu-loras", str(self.max_cpu_loras),
                "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS),
                "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: billed as cached
                # What the gateway's fair queue counts on per replica: max_num_seqs plus the burst slots.
                "--max-num-seqs", str(DEFAULT_MAX_NUM_SEQS + DEFAULT_BURST_SEQS),
            ]  # fmt: skip
        command += self.extra_args
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vLLM on {self.port} not ready:\n{self.log.read_text()[-3000:]}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def _metric(self, name: str) -> float:
        metrics = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{"))

    def successes(self) -> float:
        """Requests this server finished (its own counter)."""
        return self._metric("vllm:request_success_total")

    def running(self) -> float:
        """Requests this server is generating now."""
        return self._metric("vllm:num_requests_running")

    def adapters(self) -> set[str]:
        cards = httpx.get(f"{self.url}/v1/models", timeout=5).json()["data"]
        return {card["id"] for card in cards if card.get("parent")}

    def unload_all(self) -> None:
        for name in self.adapters():
            httpx.post(f"{self.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
