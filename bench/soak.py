"""Soak: our gateway with the real vLLM engine under concurrent streams for minutes, clients hanging up at random.

    .venv/bin/python bench/soak.py --minutes 10 --streams 32

It starts ``llmaas serve`` (no embedded worker: the gateway alone is measured), makes a tenant whose concurrency
limit equals the number of streams, and keeps ``--streams`` streaming chats going until the time is up; a share
of them (``--disconnect``) hang up after a random number of chunks. Every ``--sample-seconds`` it records the
gateway process's RSS (and its engine processes'). At the end it checks, and prints with the machine it ran on:

* RSS flat: the median of the last minute within 10 % of the median of the second minute (the first is
  warm-up: caches and pools filling);
* no request left in the engine (``llmaas_engine_requests_unfinished`` back to 0), no usage record left
  unwritten (``llmaas_ledger_backlog`` 0);
* no reservation left held: ``--streams`` concurrent requests of the tenant are all admitted afterwards;
* the ledger: one record per admitted request, and for every stream that completed the tokens it was shown.

Results: a table on stdout, ``soak.json`` and ``soak.png`` (RSS over time) in ``--results-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import contextlib

from bench.loadgen import PROMPTS, create_tenant_key, running_gateway
from bench.machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "smollm2-135m-instruct"
ADMIN_KEY = "sk-admin-soak-0123456789abcdef"


@dataclass
class Tally:
    started: int = 0
    completed: int = 0
    disconnected: int = 0
    refused: int = 0
    failed: int = 0
    shown: dict[str, int] = field(default_factory=dict)  # server request id -> total tokens the client saw


@dataclass
class Sample:
    at_s: float
    gateway_rss: int
    engine_rss: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--disconnect", type=float, default=0.25, help="share of streams that hang up early")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--dtype", default=None, help="LLMAAS_DTYPE for the engine (default: the gateway's)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


async def one_stream(client: httpx.AsyncClient, tally: Tally, rng: random.Random, max_tokens: int) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    hang_up_after = rng.randint(1, 20) if rng.random() < client.disconnect_share else None  # type: ignore[attr-defined]
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                tally.refused += 1
                await response.aread()
                return
            tally.started += 1
            request_id = response.headers["x-request-id"]
            chunks = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunks += 1
                if hang_up_after is not None and chunks >= hang_up_after:
                    tally.disconnected += 1
                    return  # leaving the block closes the connection mid-stream
                payload = json.loads(line[6:])
                if payload.get("usage"):
                    tally.shown[request_id] = int(payload["usage"]["total_tokens"])
            tally.completed += 1
    except (httpx.HTTPError, json.JSONDecodeError, KeyError):
        tally.failed += 1


async def drive(base: str, key: str, args: argparse.Namespace, tally: Tally) -> None:
    deadline = time.monotonic() + args.minutes * 60
    limits = httpx.Limits(max_connections=args.streams + 4)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=300) as client:
        client.disconnect_share = args.disconnect  # type: ignore[attr-defined]

        async def worker(index: int) -> None:
            rng = random.Random(args.seed * 1000 + index)
            while time.monotonic() < deadline:
                await one_stream(client, tally, rng, args.max_tokens)

        await asyncio.gather(*(worker(i) for i in range(args.streams)))


async def sample_rss(gateway: psutil.Process, every: float, samples: list[Sample], stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        engine = sum(child.memory_info().rss for child in gateway.children(recursive=True) if child.is_running())
        samples.append(Sample(time.monotonic() - start, gateway.memory_info().rss, engine))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def burst(base: str, key: str, count: int) -> list[int]:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=300) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(count)))
    return [r.status_code for r in responses]


def median_rss(samples: list[Sample], start_s: float, end_s: float) -> float:
    window = [s.gateway_rss for s in samples if start_s <= s.at_s < end_s]
    return statistics.median(window) if window else float("nan")


def main() -> int:
    args = parse_args()
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    model_dir = prepare_default_model(EngineSettings()).resolve()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmaas-soak-") as data_dir:
        settings = {
            "LLMAAS_MODEL_PATH": str(model_dir),
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_EMBEDDED_WORKER": "false",
            "LLMAAS_LOG_LEVEL": "warning",
        }
        if args.dtype:
            settings["LLMAAS_DTYPE"] = args.dtype
        with running_gateway(settings, args.results_dir / "soak-server.log", MODEL_ID) as gateway:
            base, proc = gateway.base_url, gateway.proc
            key = create_tenant_key(base, ADMIN_KEY, "soak", max_concurrent_requests=args.streams)
            tally, samples = Tally(), list[Sample]()

            async def run() -> None:
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_rss(psutil.Process(proc.pid), args.sample_seconds, samples, stop))
                await drive(base, key, args, tally)
                stop.set()
                await sampler

            asyncio.run(run())
            deadline = time.monotonic() + 30
            while metric(base, "llmaas_engine_requests_unfinished") and time.monotonic() < deadline:
                time.sleep(0.5)
            unfinished = metric(base, "llmaas_engine_requests_unfinished")
            time.sleep(1.5)  # the ledger writes every 0.5 s
            backlog = metric(base, "llmaas_ledger_backlog")
            after = asyncio.run(burst(base, key, args.streams))
        connection = sqlite3.connect(Path(data_dir) / "llmaas.db")
        ledger = dict(
            connection.execute(
                "SELECT request_id, prompt_tokens + completion_tokens FROM usage_records WHERE kind = 'inference'"
            ).fetchall()
        )
        connection.close()

    minutes = args.minutes
    early = median_rss(samples, 60, 120)
    late = median_rss(samples, max(minutes * 60 - 60, 120), minutes * 60 + 1)
    drift = (late - early) / early
    mismatched = [rid for rid, tokens in tally.shown.items() if ledger.get(rid) != tokens]
    result: dict[str, Any] = {
        "machine": facts,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tally": {k: v for k, v in asdict(tally).items() if k != "shown"},
        "rss_second_minute_mib": early / 2**20,
        "rss_last_minute_mib": late / 2**20,
        "rss_drift": drift,
        "engine_requests_unfinished": unfinished,
        "ledger_backlog": backlog,
        "burst_after_soak": {str(code): after.count(code) for code in sorted(set(after))},
        "ledger_records": len(ledger),
        "ledger_mismatches": len(mismatched),
        "samples": [asdict(s) for s in samples],
    }
    checks = {
        "RSS flat within 10 %": abs(drift) <= 0.10,
        "no request left in the engine": unfinished == 0,
        "no usage record left unwritten": backlog == 0,
        "no reservation left held": after.count(200) == args.streams,
        "a ledger record per admitted request": len(ledger) == tally.started + after.count(200) and not mismatched,
    }
    result["checks"] = checks
    (args.results_dir / "soak.json").write_text(json.dumps(result, indent=2))
    plot(samples, args.results_dir / "soak.png", describe(facts))
    print(f"## Soak: {minutes:g} min, {args.streams} streams, {args.disconnect:.0%} hang up early")
    print(f"machine: {describe(facts)}; dtype: {args.dtype or 'gateway default'}")
    print()
    print("| | |\n|---|---|")
    print(
        f"| streams started / completed / hung up / refused / failed | {tally.started} / {tally.completed} / "
        f"{tally.disconnected} / {tally.refused} / {tally.failed} |"
    )
    print(
        f"| gateway RSS, 2nd minute → last minute (median) | {early / 2**20:.0f} → {late / 2**20:.0f} MiB "
        f"({drift:+.1%}) |"
    )
    print(f"| engine requests left / ledger backlog | {unfinished:g} / {backlog:g} |")
    print(f"| burst of {args.streams} after the soak | {result['burst_after_soak']} |")
    print(
        f"| ledger records / requests admitted (soak + burst) / token mismatches | {len(ledger)} / "
        f"{tally.started} + {after.count(200)} / {len(mismatched)} |"
    )
    print()
    for name, ok in checks.items():
        print(f"- {'PASS' if ok else 'FAIL'}: {name}")
    return 0 if all(checks.values()) else 1


def plot(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    axis.plot([s.at_s / 60 for s in samples], [s.gateway_rss / 2**20 for s in samples], label="gateway")
    axis.plot([s.at_s / 60 for s in samples], [s.engine_rss / 2**20 for s in samples], label="engine processes")
    axis.set_xlabel("minutes")
    axis.set_ylabel("RSS (MiB)")
    axis.set_title("\n".join(textwrap.wrap(f"Soak: RSS over time ({title})", 100)), fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
