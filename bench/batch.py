"""The Batch API beside interactive traffic: interactive TTFT p50 without a batch and with a batch running
(target: with ≤ 1.5x without), the batch's throughput, that it finishes, and that its ledger equals its output
file's usage.

    .venv/bin/python bench/batch.py [--requests 1000] [--batch-max-tokens 16] [--streams 4] [--rounds 5]
                                    [--interactive-max-tokens 32] [--results-dir bench/results] [--no-wait]

One gateway (``llmaas serve``, the default model, in-process vLLM, SQLite). Two tenants: one sends interactive
streaming chats (``--streams`` at once, ``--rounds`` times), the other a batch of ``--requests`` chat requests
through the official ``openai`` client. First the interactive rounds alone, then the batch is created and the
same rounds run while it is in progress; then the batch is waited for, its output file read, and every output
line's usage compared with its ledger record (kind ``batch``, same request id). It prints a Markdown table beside
the machine (CPU, ISA, dtype) and the load average, and writes ``batch.json`` into ``--results-dir``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import PROMPTS, chat_body, create_tenant_key, percentile, run_load, running_gateway, wait_until_quiet
from bench.machine import describe, machine

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"


def interactive_ttft(base_url: str, key: str, streams: int, rounds: int, max_tokens: int) -> list[float]:
    ttfts: list[float] = []
    for round_number in range(rounds):
        bodies = [chat_body(PROMPTS[(round_number + i) % len(PROMPTS)], max_tokens, MODEL) for i in range(streams)]
        results, _ = asyncio.run(run_load(base_url, key, bodies))
        failed = [r.error for r in results if not r.ok]
        if failed:
            raise SystemExit(f"{len(failed)} interactive requests failed: {failed[0]}")
        ttfts += [r.ttft_s for r in results if r.ttft_s is not None]
    return ttfts


def batch_file(requests: int, max_tokens: int) -> bytes:
    lines = []
    for i in range(requests):
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        body |= {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
        lines.append(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def ledger_matches(database_url: str, output: list[dict[str, Any]]) -> bool:
    """Every output line's usage is its ledger record's (kind ``batch``), and the ledger has no other."""
    wanted = {
        line["response"]["request_id"]: (
            line["response"]["body"]["usage"]["prompt_tokens"],
            line["response"]["body"]["usage"]["completion_tokens"],
        )
        for line in output
    }
    engine = create_engine(database_url)
    try:
        for _ in range(60):  # the ledger writer flushes within a second
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT request_id, prompt_tokens, completion_tokens FROM usage_records WHERE kind = 'batch'")
                ).all()
            if len(rows) >= len(wanted):
                break
            time.sleep(0.5)
    finally:
        engine.dispose()
    return {row[0]: (row[1], row[2]) for row in rows} == wanted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--batch-max-tokens", type=int, default=16)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interactive-max-tokens", type=int, default=32)
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (a smoke run)")
    args = parser.parse_args(argv)
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as data_dir:
        settings = {
            "LLMAAS_MODEL_PATH": str(prepare_default_model(EngineSettings()).resolve()),
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_EMBEDDED_WORKER": "false",
            "LLMAAS_LOG_LEVEL": "warning",
            "LLMAAS_BATCH_CONCURRENCY": str(args.batch_concurrency),
        }
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL) as gateway:
            base = gateway.base_url
            interactive = create_tenant_key(base, ADMIN_KEY, "bench-interactive")
            batcher = openai.OpenAI(base_url=f"{base}/v1", api_key=create_tenant_key(base, ADMIN_KEY, "bench-batch"))
            interactive_ttft(base, interactive, 1, 1, 4)  # the engine warmed: unmeasured
            if not args.no_wait:
                print(f"machine quiet after {wait_until_quiet():.0f} s", flush=True)
            alone = interactive_ttft(base, interactive, args.streams, args.rounds, args.interactive_max_tokens)
            uploaded = batcher.files.create(
                file=("batch.jsonl", batch_file(args.requests, args.batch_max_tokens)), purpose="batch"
            )
            batch = batcher.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while batcher.batches.retrieve(batch.id).status == "validating":
                time.sleep(0.2)
            beside = interactive_ttft(base, interactive, args.streams, args.rounds, args.interactive_max_tokens)
            still_running = batcher.batches.retrieve(batch.id).status == "in_progress"
            while (done := batcher.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
                time.sleep(1)
            load = os.getloadavg()
            output = [json.loads(line) for line in batcher.files.content(done.output_file_id or "").text.splitlines()]
            matches = ledger_matches(f"sqlite:///{data_dir}/llmaas.db", output)
    seconds = (done.completed_at or 0) - (done.in_progress_at or 0)
    tokens = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    alone_p50, beside_p50 = percentile(alone, 50) or 0.0, percentile(beside, 50) or 0.0
    result = {
        "requests": args.requests,
        "status": done.status,
        "completed": len(output),
        "batch_seconds": seconds,
        "batch_requests_per_s": len(output) / max(seconds, 1),
        "batch_output_tok_s": tokens / max(seconds, 1),
        "ttft_p50_alone_s": alone_p50,
        "ttft_p50_beside_batch_s": beside_p50,
        "ttft_ratio": beside_p50 / alone_p50 if alone_p50 else None,
        "batch_ran_throughout": still_running,
        "ledger_equals_output": matches,
        "load_average": load,
    }
    print(f"\n{describe(facts)}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print("| batch | finished | req/s | output tok/s | TTFT p50 alone | TTFT p50 beside | ratio | ledger = output |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    print(
        f"| {args.requests} x {args.batch_max_tokens} tok | {done.status} ({len(output)}) | "
        f"{result['batch_requests_per_s']:.2f} | {result['batch_output_tok_s']:.1f} | {alone_p50 * 1000:.0f} ms | "
        f"{beside_p50 * 1000:.0f} ms | {result['ttft_ratio'] or 0:.2f}x | {matches} |"
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "batch.json").write_text(json.dumps({"machine": facts, "result": result}, indent=2))
    return 0 if done.status == "completed" and matches else 1


if __name__ == "__main__":
    raise SystemExit(main())
