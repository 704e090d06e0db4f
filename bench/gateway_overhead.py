"""Gateway overhead: what auth + limits + metering + routing add to a request, with the engine taken out.

    .venv/bin/python bench/gateway_overhead.py [--requests 400] [--concurrency 32] [--seconds 10]

Three servers, one after another, each on its own port and process:

* ``baseline``: a bare FastAPI app whose chat endpoint returns a fixed completion (the floor: HTTP,
  JSON, uvicorn and the client, nothing of ours);
* ``gateway``: our whole gateway (``bench/fake_gateway.py``) in front of the instant fake engine, with a
  tenant whose RPM, TPM, concurrency and monthly budgets are all set, so every check runs, and the
  usage ledger on SQLite;
* ``gateway+redis``: the same with limits in Redis (``LLMAAS_REDIS_URL``).

For each: sequential latency (p50/p99 over ``--requests`` non-streaming chat completions of 16 tokens)
and the most requests/s ``--concurrency`` clients get in ``--seconds``. It prints a Markdown table with the
latency added over the baseline and writes ``gateway_overhead.json`` into ``--results-dir``. Client and
server share this machine's cores, so requests/s are a floor, not a ceiling.
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
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import create_tenant_key, free_port, percentile
from bench.machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there!"}], "max_tokens": 16}

BASELINE_APP = """
import sys, time, uvicorn
from fastapi import FastAPI, Request
app = FastAPI()
@app.get("/ready")
def ready(): return {"status": "ready"}
@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "The quick brown "},
                         "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 16, "total_tokens": 36}}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def start(name: str, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_")}
    env.update(LLMAAS_DATA_DIR=str(data_dir), LLMAAS_ADMIN_KEY=ADMIN_KEY)
    if name == "baseline":
        command = [sys.executable, "-c", BASELINE_APP, str(port)]
    else:
        command = [sys.executable, str(REPO / "bench" / "fake_gateway.py"), "--port", str(port)]
        if name == "gateway+redis":
            env["LLMAAS_REDIS_URL"] = "redis://127.0.0.1:6379/13"
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} did not start; see {data_dir / 'server.log'}")


def tenant_key(base: str) -> str:
    """A tenant with every limit set (high), so that every check runs."""
    return create_tenant_key(
        base,
        ADMIN_KEY,
        "bench",
        requests_per_minute=10_000_000,
        tokens_per_minute=1_000_000_000,
        max_concurrent_requests=10_000,
        monthly_token_budget=10**15,
        monthly_cost_budget="1000000",
        model_prices={MODEL: {"input": "0.1", "output": "0.2"}},
    )


async def sequential(base: str, key: str, requests: int) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}) as http:
        for _ in range(20):  # warm up
            (await http.post("/v1/chat/completions", json=BODY)).raise_for_status()
        for _ in range(requests):
            started = time.perf_counter()
            response = await http.post("/v1/chat/completions", json=BODY)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
    return latencies


async def saturate(base: str, key: str, concurrency: int, seconds: float) -> tuple[float, int]:
    done = errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base, headers={"authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as http:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                response = await http.post("/v1/chat/completions", json=BODY)
                done += 1
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return done / elapsed, errors


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix=f"overhead-{name}-") as data_dir:
        proc = start(name, port, Path(data_dir))
        try:
            key = "none" if name == "baseline" else tenant_key(base)
            latencies = asyncio.run(sequential(base, key, args.requests))
            rps, errors = asyncio.run(saturate(base, key, args.concurrency, args.seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "server": name,
        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "requests_per_s": rps,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    facts = machine()
    rows = [measure(name, args) for name in ("baseline", "gateway", "gateway+redis")]
    base = rows[0]
    print(f"\n## Gateway overhead ({describe(facts)}; fake engine, 16-token non-streaming chat)\n")
    print("| server | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | requests/s | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        added_p50 = row["p50_ms"] - base["p50_ms"]
        added_p99 = row["p99_ms"] - base["p99_ms"]
        print(
            f"| {row['server']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {added_p50:.2f} | {added_p99:.2f} "
            f"| {row['requests_per_s']:.0f} | {row['errors']} |"
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "gateway_overhead.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
