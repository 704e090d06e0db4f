"""Noisy neighbour: tenant B sends one short request every second while tenant A keeps (a) as many long streams
as the engine runs at once and (b) twice that many; B's time to first token (p50/p99) with fair queuing and with
first come, first served (``LLMAAS_FAIR_QUEUING=false``), against B alone; and A's throughput.

    .venv/bin/python bench/noisy_neighbour.py [--capacity 4] [--seconds 30] [--a-tokens 256] [--b-tokens 8]
        [--b-interval 1] [--model-path DIR | --fake-engine SECONDS_PER_TOKEN] [--results-dir bench/results]
        [--no-wait]

One gateway per mode (``llmaas serve``, the default model, in-process vLLM, ``LLMAAS_MAX_NUM_SEQS=--capacity``,
so the gateway holds back what the engine cannot run). Targets (issue 21): with fair queuing, B's TTFT p50 in (b)
at most 1.5x its TTFT in (a), and A's throughput down by at most 10 % against first come, first served. Prints a
Markdown table beside the machine and writes ``noisy_neighbour.json`` into ``--results-dir``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import chat_body, create_tenant_key, percentile, running_gateway, wait_until_quiet
from bench.machine import describe, machine

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"


@dataclass
class Window:
    """What one scenario measured: B's TTFTs, A's tokens streamed inside the window."""

    b_ttft: list[float] = field(default_factory=list)
    b_failed: int = 0
    a_tokens: int = 0
    seconds: float = 0.0


async def _stream(client: httpx.AsyncClient, body: dict[str, Any], on_token: Any = None) -> float | None:
    """One streamed chat request; its TTFT (None: it failed). ``on_token`` is called for each content chunk."""
    start = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return None
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            for choice in json.loads(line[5:]).get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    if on_token is not None:
                        on_token()
    return ttft


def _client(base_url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(900, connect=30),
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
    )


async def scenario(base_url: str, keys: dict[str, str], a_streams: int, args: argparse.Namespace) -> Window:
    window = Window()
    async with _client(base_url, keys["a"]) as a_client, _client(base_url, keys["b"]) as b_client:

        def count() -> None:
            window.a_tokens += 1

        async def keep_streaming(i: int) -> None:
            while True:
                await _stream(a_client, chat_body(f"Tell a long story, part {i}.", args.a_tokens, MODEL), count)

        async def b_request() -> None:
            ttft = await _stream(b_client, chat_body("What is the capital of France?", args.b_tokens, MODEL))
            if ttft is None:
                window.b_failed += 1
            else:
                window.b_ttft.append(ttft)

        a_tasks = [asyncio.create_task(keep_streaming(i)) for i in range(a_streams)]
        await asyncio.sleep(args.ramp)  # A's streams fill the engine (and its queue) first
        window.a_tokens = 0
        start = time.perf_counter()
        b_tasks = []
        while time.perf_counter() - start < args.seconds:
            b_tasks.append(asyncio.create_task(b_request()))
            await asyncio.sleep(args.b_interval)
        window.seconds = time.perf_counter() - start
        a_seen = window.a_tokens
        await asyncio.gather(*b_tasks)
        for task in a_tasks:
            task.cancel()
        await asyncio.gather(*a_tasks, return_exceptions=True)
        window.a_tokens = a_seen
    return window


async def warm_up(base_url: str, key: str, args: argparse.Namespace) -> None:
    """A full batch of both kinds of request, unmeasured: the engine's first steps at a batch size are slow."""
    async with _client(base_url, key) as client:
        bodies = [chat_body("Warm up.", args.b_tokens, MODEL) for _ in range(args.capacity - 1)]
        await asyncio.gather(*(_stream(client, body) for body in bodies))


def row(label: str, mode: str, a_streams: int, window: Window) -> dict[str, Any]:
    return {
        "scenario": label,
        "mode": mode,
        "a_streams": a_streams,
        "b_requests": len(window.b_ttft),
        "b_failed": window.b_failed,
        "b_ttft_p50_s": percentile(window.b_ttft, 50),
        "b_ttft_p99_s": percentile(window.b_ttft, 99),
        "a_tok_s": window.a_tokens / window.seconds if window.seconds else None,
    }


def run_mode(fair: bool, args: argparse.Namespace, model_path: str) -> list[dict[str, Any]]:
    mode = "fair" if fair else "fcfs"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-noisy-") as data_dir:
        settings = {
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_EMBEDDED_WORKER": "false",
            "LLMAAS_EMBEDDING_MODEL": "",
            "LLMAAS_LOG_LEVEL": "warning",
            "LLMAAS_MAX_NUM_SEQS": str(args.capacity),
            "LLMAAS_FAIR_QUEUING": "true" if fair else "false",
            "LLMAAS_QUEUE_WAIT_SECONDS": "900",
        }
        if model_path:
            settings["LLMAAS_MODEL_PATH"] = model_path
        script = ("-m", "gateway.cli", "serve")
        if args.fake_engine is not None:
            script = ("bench/fake_gateway.py", "--seconds-per-token", str(args.fake_engine))
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL, script=script) as gateway:
            keys = {name: create_tenant_key(gateway.base_url, ADMIN_KEY, f"bench-{name}") for name in ("a", "b")}
            asyncio.run(warm_up(gateway.base_url, keys["b"], args))
            plan = [("(a) A = capacity", args.capacity), ("(b) A = 2x capacity", 2 * args.capacity)]
            if fair:
                plan.insert(0, ("B alone", 0))
            for label, a_streams in plan:
                if not args.no_wait:
                    print(f"machine quiet after {wait_until_quiet():.0f} s", flush=True)
                window = asyncio.run(scenario(gateway.base_url, keys, a_streams, args))
                rows.append(row(label, mode, a_streams, window))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=4, help="LLMAAS_MAX_NUM_SEQS: sequences the engine runs")
    parser.add_argument("--seconds", type=float, default=30, help="how long B sends, per scenario")
    parser.add_argument("--ramp", type=float, default=3, help="seconds A streams alone before B starts")
    parser.add_argument("--a-tokens", type=int, default=256, help="tokens of each of A's streams")
    parser.add_argument("--b-tokens", type=int, default=8, help="tokens of each of B's requests")
    parser.add_argument("--b-interval", type=float, default=1.0, help="seconds between B's requests")
    parser.add_argument(
        "--fake-engine",
        type=float,
        metavar="SECONDS_PER_TOKEN",
        help="the instant fake engine (bench/fake_gateway.py) at this pace per token, in place of vLLM: the queue's "
        "order alone, without the engine's own cost of a batch",
    )
    parser.add_argument("--model-path", type=Path, help="a prepared model dir; unset: the default model, prepared")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (a smoke run)")
    args = parser.parse_args(argv)
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    if args.fake_engine is not None:
        model_path = ""
    else:
        model_path = str((args.model_path or prepare_default_model(EngineSettings())).resolve())
    rows = run_mode(True, args, model_path) + run_mode(False, args, model_path)
    load = os.getloadavg()
    engine = "fake engine" if args.fake_engine is not None else "vLLM"
    averages = " ".join(f"{value:.2f}" for value in load)
    print(f"\n{engine}, capacity {args.capacity}; {describe(facts)}; load average {averages}\n")
    print("| scenario | queue | A streams | B TTFT p50 s | B TTFT p99 s | B requests (failed) | A tok/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        a_tok_s = "-" if not r["a_streams"] else f"{r['a_tok_s']:.1f}"
        print(
            f"| {r['scenario']} | {r['mode']} | {r['a_streams']} | {_seconds(r['b_ttft_p50_s'])} | "
            f"{_seconds(r['b_ttft_p99_s'])} | {r['b_requests']} ({r['b_failed']}) | {a_tok_s} |"
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    summary = {"machine": facts, "load_average": load, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.results_dir / "noisy_neighbour.json").write_text(json.dumps({**summary, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
