"""Proxy overhead of the upstream backend: what the gateway adds in front of a model server, with the model
taken out (an instant fake OpenAI server, ``bench/fake_upstream.py``).

    .venv/bin/python bench/proxy_overhead.py [--requests 2000] [--clients 16] [--seconds 10] [--max-tokens 8]

Two paths to the same fake server, one after another:

* ``direct``: the client streams ``/v1/completions`` from the fake server itself (the floor: HTTP, SSE and the
  client, nothing of ours);
* ``gateway``: the client asks our gateway (``LLMAAS_ENGINE=upstream``) for a chat completion
  (non-streaming), with auth, a tenant whose RPM, TPM, concurrency and monthly token and cost budgets are all
  set (every check runs), chat template and tokenizing, routing, the upstream stream, and metering into the
  ledger (SQLite, in-process limits; ``--redis`` for limits in Redis).

Per path: latency p50/p99 of ``--requests`` sequential requests (1 client), the requests/s ``--clients``
concurrent clients sustain for ``--seconds``, and the server process's CPU time per request meanwhile.

``--compare DIR`` adds a second gateway run from another checkout of this repository (``git worktree add DIR
REV``: the code before a change), same settings and interpreter: the sequential requests then alternate between
the two gateways (one to each, in turn), so that both see the same moments of a noisy machine and the difference
of their latencies is the change's cost; throughput is measured one gateway after the other. Prints a
Markdown table (added latency = gateway - direct) and
writes ``proxy_overhead.json`` into ``--results-dir``. Client, gateway and fake server share this machine's
cores, so requests/s are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import (
    create_tenant_key,
    free_port,
    fresh_postgres_database,
    percentile,
    running_gateway,
    stop_server,
)
from bench.machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Hello there!"}]


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    async with session.post(url, json=body, headers=headers) as response:
        payload = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {payload[:300]!r}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    pid: int


async def _throughput(session: aiohttp.ClientSession, target: Target, args: argparse.Namespace) -> tuple[float, float]:
    """Requests/s of ``--clients`` concurrent clients for ``--seconds``, and the server's CPU µs per request."""
    done = 0
    deadline = time.perf_counter() + args.seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await _one(session, target.url, target.body, target.headers)
            done += 1

    started, cpu_before = time.perf_counter(), cpu_seconds(target.pid)
    await asyncio.gather(*(client() for _ in range(args.clients)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(target.pid) - cpu_before
    return done / elapsed, cpu / done * 1e6


async def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Sequential latency (the targets in turn, one request each), then for each target alone the throughput of
    concurrent clients and the server's CPU time per request meanwhile (steadier than requests/s on a machine
    whose cores the client and the servers share)."""
    connector = aiohttp.TCPConnector(limit=args.clients, force_close=False)
    latencies: dict[str, list[float]] = {target.name: [] for target in targets}
    rows: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        for target in targets:
            for _ in range(50):  # warm up: connections, caches, the first tokenizer calls
                await _one(session, target.url, target.body, target.headers)
        for _ in range(args.requests):
            for target in targets:
                start = time.perf_counter()
                await _one(session, target.url, target.body, target.headers)
                latencies[target.name].append((time.perf_counter() - start) * 1000)
        for target in targets:
            requests_per_s, cpu_us = await _throughput(session, target, args)
            rows[target.name] = {
                "p50_ms": statistics.median(latencies[target.name]),
                "p99_ms": percentile(latencies[target.name], 99),
                "requests_per_s": requests_per_s,
                "server_cpu_us_per_request": cpu_us,
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path (latency)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (throughput)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--redis", action="store_true", help="limits in Redis (LLMAAS_REDIS_URL)")
    parser.add_argument("--postgres", action="store_true", help="the ledger on PostgreSQL (a fresh database each)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--compare", type=Path, help="another checkout's gateway, measured beside this one's")
    args = parser.parse_args()

    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings
    from engine.tokenizer import HFTokenizer

    facts = machine()
    print(f"machine: {describe(facts)}")
    model_dir = prepare_default_model(EngineSettings()).resolve()
    tokenizer = HFTokenizer(model_dir)
    prompt_ids = tokenizer.encode(tokenizer.render_chat(MESSAGES))
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    fake = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "fake_upstream.py"),
            "--port",
            str(upstream_port),
            "--root",
            str(model_dir),
        ],
        cwd=REPO,
        start_new_session=True,
    )
    try:
        direct_body = {
            "model": MODEL, "prompt": prompt_ids, "max_tokens": args.max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "return_token_ids": True,
        }  # fmt: skip
        time.sleep(2)
        direct = Target("direct", f"{upstream_url}/v1/completions", direct_body, {}, fake.pid)
        rows = asyncio.run(measure([direct], args))
        checkouts = {"gateway": REPO}
        if args.compare:
            checkouts[f"gateway @ {args.compare.name}"] = args.compare.resolve()
        with ExitStack() as stack:
            targets = []
            for name, checkout in checkouts.items():
                data_dir = stack.enter_context(tempfile.TemporaryDirectory())
                settings = {
                    "LLMAAS_DATA_DIR": data_dir,
                    "LLMAAS_ADMIN_KEY": ADMIN_KEY,
                    "LLMAAS_ENGINE": "upstream",
                    "LLMAAS_UPSTREAM_URLS": upstream_url,
                    "LLMAAS_EMBEDDED_WORKER": "false",
                    "LLMAAS_LOG_LEVEL": "warning",
                }
                if args.redis:
                    settings["LLMAAS_REDIS_URL"] = "redis://127.0.0.1:6379/13"
                if args.postgres:
                    settings["LLMAAS_DATABASE_URL"] = stack.enter_context(fresh_postgres_database("llmaas_bench"))
                log = results_dir / f"proxy_overhead-{checkout.name}.log"
                gateway = stack.enter_context(running_gateway(settings, log, MODEL, 120, checkout=checkout))
                key = create_tenant_key(
                    gateway.base_url, ADMIN_KEY, "bench",
                    requests_per_minute=10_000_000, tokens_per_minute=1_000_000_000, max_concurrent_requests=10_000,
                    monthly_token_budget=10**15, monthly_cost_budget="1000000",
                    model_prices={MODEL: {"input": "0.1", "output": "0.2"}},
                )  # fmt: skip
                body = {"model": MODEL, "messages": MESSAGES, "max_tokens": args.max_tokens}
                url = f"{gateway.base_url}/v1/chat/completions"
                targets.append(Target(name, url, body, {"authorization": f"Bearer {key}"}, gateway.proc.pid))
            rows |= asyncio.run(measure(targets, args))
    finally:
        stop_server(fake)

    limits = "Redis" if args.redis else "in-process"
    ledger = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\n{args.requests} sequential requests, then {args.clients} clients for {args.seconds:.0f} s; "
          f"{args.max_tokens} tokens each; gateway limits {limits}, ledger on {ledger}\n")  # fmt: skip
    print(
        f"| path | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | requests/s ({args.clients} clients) "
        "| server CPU per request (µs) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        added = ["-", "-"]
        if name != "direct":
            added = [f"{row[q] - rows['direct'][q]:.2f}" for q in ("p50_ms", "p99_ms")]
        cells = [name, f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", *added, f"{row['requests_per_s']:.0f}"]
        cells.append(f"{row['server_cpu_us_per_request']:.0f}")
        print("| " + " | ".join(cells) + " |")
    output = results_dir / "proxy_overhead.json"
    output.write_text(json.dumps({"machine": facts, "args": vars(args), "rows": rows}, indent=2, default=str))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
