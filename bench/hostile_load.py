"""Hostile load: does one tenant's worst input stall the gateway for everyone else?

    .venv/bin/python bench/hostile_load.py [--seconds 8] [--results-dir bench/results]

One real gateway (``bench/fake_gateway.py``: auth, limits, ledger, evals, files, fine-tuning routes on SQLite,
the instant fake engine standing in for vLLM). A victim tenant sends a steady stream of small chat completions
while ``/health`` is probed every 20 ms; meanwhile an attacker tenant runs one campaign at a time:

* ``quiet``: nothing (the floor);
* ``regex``: evals whose item schema holds a catastrophic pattern (``^(a+)+$``), run over items that make a
  backtracking engine take exponential time;
* ``ssrf``: evals whose item schema ``$ref``s a local listener that accepts and never answers (and
  ``file:///etc/passwd``), forty evals and their runs at once;
* ``fuzzy``: an eval graded by text similarity over 250,000-character items;
* ``deep-json``: chat bodies and JSONL training lines nested 5,000 deep;
* ``big-training-file``: fine-tuning jobs on a 4 MB training file;
* ``slow-bodies``: twenty requests whose bodies trickle in a byte a second.

For each campaign it prints the probe's and the victim's p50/p99/max latency and the statuses the attacker got
(any 5xx is a bug). The target: ``/health`` p99 within 200 ms of quiet, and no campaign answered with a 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import create_tenant_key, free_port, percentile, stop_server
from bench.machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
VICTIM_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 16}
QUOTAS = {"requests_per_minute": 1_000_000, "max_storage_bytes": 10**9}
TEMPLATE = [{"role": "user", "content": "{{item.text}}"}]
STALL_TIMEOUT_S = 10.0
"""A probe or victim request unanswered this long is recorded as a stall of this long."""


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP listener on loopback that accepts connections and never answers: what an SSRF target that holds
    a thread looks like. Yields its port; counts nothing (the tests prove it is never called)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def completions_run(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "data_source": {
            "type": "completions",
            "model": MODEL,
            "input_messages": {"type": "template", "template": TEMPLATE},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 4},
            "source": {"type": "file_content", "content": [{"item": item} for item in items]},
        }
    }


def custom_eval(item_schema: dict[str, Any], criteria: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "hostile",
        "data_source_config": {"type": "custom", "item_schema": item_schema},
        "testing_criteria": criteria
        or [
            {
                "type": "string_check",
                "name": "eq",
                "input": "{{sample.output_text}}",
                "reference": "{{item.text}}",
                "operation": "eq",
            }
        ],
    }


Campaign = Callable[[httpx.AsyncClient, Counter[str]], Awaitable[None]]


async def _eval_then_run(
    http: httpx.AsyncClient, statuses: Counter[str], body: dict[str, Any], items: list[Any]
) -> None:
    created = await http.post("/v1/evals", json=body)
    statuses[f"eval {created.status_code}"] += 1
    if created.status_code == 200:
        run = await http.post(f"/v1/evals/{created.json()['id']}/runs", json=completions_run(items))
        statuses[f"run {run.status_code}"] += 1


async def regex(http: httpx.AsyncClient, statuses: Counter[str]) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string", "pattern": "^(a+)+$"}}}
    items = [{"text": "a" * n + "!"} for n in (22, 24, 26)]
    await _eval_then_run(http, statuses, custom_eval(schema), items)


def ssrf(port: int) -> Campaign:
    async def campaign(http: httpx.AsyncClient, statuses: Counter[str]) -> None:
        refs = [f"http://127.0.0.1:{port}/schema.json", "file:///etc/passwd", "ftp://127.0.0.1/x", "urn:x:y"]
        bodies = [custom_eval({"$ref": refs[i % len(refs)]}) for i in range(40)]
        await asyncio.gather(*(_eval_then_run(http, statuses, body, [{"text": "x"}]) for body in bodies))

    return campaign


async def fuzzy(http: httpx.AsyncClient, statuses: Counter[str]) -> None:
    criteria = [
        {
            "type": "text_similarity",
            "name": "close",
            "input": "{{item.text}}",
            "reference": "{{item.other}}",
            "evaluation_metric": "fuzzy_match",
            "pass_threshold": 0.5,
        }
    ]
    items = [{"text": "ab" * 125_000, "other": "ba" * 125_000}]
    await _eval_then_run(http, statuses, custom_eval({"type": "object"}, criteria), items)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def deep_json(http: httpx.AsyncClient, statuses: Counter[str]) -> None:
    body = json.dumps({"model": MODEL, "messages": None}).replace("null", _nested(5000))
    chat = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    statuses[f"chat {chat.status_code}"] += 1
    line = json.dumps({"messages": [{"role": "user", "content": None}]}).replace("null", _nested(5000)) + "\n"
    upload = await http.post("/v1/files", files={"file": ("deep.jsonl", line.encode())}, data={"purpose": "fine-tune"})
    statuses[f"upload {upload.status_code}"] += 1


def big_training_file(file_id: str) -> Campaign:
    async def campaign(http: httpx.AsyncClient, statuses: Counter[str]) -> None:
        job = await http.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id})
        statuses[f"job {job.status_code}"] += 1
        if job.status_code == 200:
            await http.post(f"/v1/fine_tuning/jobs/{job.json()['id']}/cancel")

    return campaign


def training_lines(size: int) -> bytes:
    line = (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "What is the capital of France? " * 8},
                    {"role": "assistant", "content": "Paris. " * 8},
                ]
            }
        ).encode()
        + b"\n"
    )
    return line * (size // len(line))


async def slow_bodies(base: str, key: str, statuses: Counter[str], seconds: float) -> None:
    """Twenty requests that announce a body and send a byte a second."""

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
            "content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
        )
        writer.write(head.encode())
        status = "held open"
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                writer.write(b" ")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                    status = line.decode(errors="replace").split(" ")[1] if line else "closed"
                    break
        statuses[f"slow body {status}"] += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(20)))


async def measure(
    base: str, victim: str, attacker: str, name: str, campaign: Campaign | None, seconds: float
) -> dict[str, Any]:
    health: list[float] = []
    chats: list[float] = []
    statuses: Counter[str] = Counter()
    stop = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=STALL_TIMEOUT_S) as http:
            while not stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):  # a timeout is counted as what it is: a stall
                    await http.get("/health")
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    async def victim_load() -> None:
        auth = {"authorization": f"Bearer {victim}"}
        async with httpx.AsyncClient(base_url=base, timeout=STALL_TIMEOUT_S, headers=auth) as http:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/chat/completions", json=VICTIM_BODY)
                    statuses[f"victim {response.status_code}"] += 1
                except httpx.HTTPError as exc:
                    statuses[f"victim {type(exc).__name__}"] += 1
                chats.append(time.perf_counter() - started)

    async def attack() -> None:
        if name == "slow-bodies":
            await slow_bodies(base, attacker, statuses, seconds)
            return
        async with httpx.AsyncClient(
            base_url=base, timeout=30, headers={"authorization": f"Bearer {attacker}"}
        ) as http:
            deadline = time.monotonic() + seconds
            while campaign is not None and time.monotonic() < deadline:
                try:
                    await campaign(http, statuses)
                except httpx.HTTPError as exc:  # a request the gateway never answered in time: a stall
                    statuses[type(exc).__name__] += 1

    tasks = [asyncio.create_task(probe()), asyncio.create_task(victim_load())]
    await asyncio.sleep(0.5)
    health.clear()
    chats.clear()
    await asyncio.gather(attack(), asyncio.sleep(seconds))
    stop.set()
    await asyncio.gather(*tasks)

    def ms(values: list[float], q: float) -> float:
        return (percentile(values, q) or 0.0) * 1000

    return {
        "campaign": name,
        "health_p50_ms": ms(health, 50),
        "health_p99_ms": ms(health, 99),
        "health_max_ms": max(health, default=0) * 1000,
        "victim_p50_ms": ms(chats, 50),
        "victim_p99_ms": ms(chats, 99),
        "attacker_statuses": dict(statuses),
        "server_errors": sum(n for status, n in statuses.items() if status.split()[-1].startswith("5")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each campaign runs")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    facts = machine()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="hostile-") as data, silent_listener() as listener:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_")}
        env.update(LLMAAS_DATA_DIR=data, LLMAAS_ADMIN_KEY=ADMIN_KEY, LLMAAS_LOG_LEVEL="warning")
        with (Path(data) / "gateway.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "bench" / "fake_gateway.py"), "--port", str(port)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start; see {data}/gateway.log")
                time.sleep(0.2)
            victim = create_tenant_key(base, ADMIN_KEY, "victim", **QUOTAS)
            attacker = create_tenant_key(base, ADMIN_KEY, "attacker", **QUOTAS)
            upload = httpx.post(
                f"{base}/v1/files",
                headers={"authorization": f"Bearer {attacker}"},
                files={"file": ("big.jsonl", training_lines(4 * 1024 * 1024))},
                data={"purpose": "fine-tune"},
                timeout=120,
            )
            upload.raise_for_status()
            campaigns: list[tuple[str, Campaign | None]] = [
                ("quiet", None),
                ("regex", regex),
                ("ssrf", ssrf(listener)),
                ("fuzzy", fuzzy),
                ("deep-json", deep_json),
                ("big-training-file", big_training_file(upload.json()["id"])),
                ("slow-bodies", None),
            ]
            rows = [asyncio.run(measure(base, victim, attacker, name, c, args.seconds)) for name, c in campaigns]
        finally:
            stop_server(proc)  # a frozen gateway is killed
    quiet = rows[0]
    print(f"\n## Hostile load ({describe(facts)}; fake engine, {args.seconds:g} s per campaign)\n")
    print(
        "| campaign | /health p50 / p99 / max (ms) | p99 over quiet (ms) | victim chat p50 / p99 (ms) | attacker got |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        got = ", ".join(
            f"{status} x{n}" for status, n in sorted(row["attacker_statuses"].items()) if "victim" not in status
        )
        health = f"{row['health_p50_ms']:.1f} / {row['health_p99_ms']:.1f} / {row['health_max_ms']:.1f}"
        over_quiet = row["health_p99_ms"] - quiet["health_p99_ms"]
        victim = f"{row['victim_p50_ms']:.1f} / {row['victim_p99_ms']:.1f}"
        print(f"| {row['campaign']} | {health} | {over_quiet:+.1f} | {victim} | {got or '-'} |")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "hostile_load.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
