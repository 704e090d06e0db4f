"""Prefix-aware routing against least-busy and round robin, on two real vLLM servers whose prefix caches each hold
about half of the tenants' system prompts.

    .venv/bin/python bench/prefix_routing.py [--tenants 8] [--prefix-words 850] [--clients 8] [--seconds 60]

Two CPU vLLM OpenAI servers (one core each) behind our gateway (``LLMAAS_ENGINE=upstream``), each with a KV cache
of ``--kv-blocks`` blocks of 128 tokens (``--num-gpu-blocks-override``; by default sized to hold half of the
tenants' prompts plus a block for each request running there). Every tenant has its own system prompt of about
``--prefix-words`` words (~1,000 tokens); ``--clients`` clients send streamed chats, each for a tenant drawn at
random (seeded, the same sequence for every policy) with a short question, for ``--seconds``; the policies take
turns ``--rounds`` times after a warm-up run (so the machine's other load and the servers' first slow requests
fall on none in particular). Before each run both servers' prefix caches are emptied (``/reset_prefix_cache``,
vLLM's dev mode) and the gateway starts afresh.
Prints a Markdown table — TTFT p50/p99, latency p50, requests/s, output tokens/s, and the servers' prefix cache hit
rate (``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries``, in tokens) — with the machine beside it, and
writes ``prefix_routing.json`` into ``--results-dir``. ``adapter-aware`` ranks base-model requests exactly as
``least-busy`` does (add it with ``--policies``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import loadgen
from bench.loadgen import PROMPTS, RequestResult, percentile, stream_chat
from bench.machine import describe, machine
from bench.routing import ADMIN_KEY, MODEL, upstream_replicas
from engine.upstream.local_server import VLLMReplica

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("prefix-aware", "least-busy", "round-robin")
BLOCK_TOKENS = 128
"""vLLM's KV block size on CPU."""
MAX_MODEL_LEN = 2048
"""``VLLMReplica``'s ``--max-model-len``."""
WORDS = sorted({word.strip("?").lower() for prompt in PROMPTS for word in prompt.split()})


def system_prompt(tenant: int, words: int) -> str:
    """A tenant's own long instructions: its name first, so no two tenants share even a first block."""
    chooser = random.Random(tenant)
    body = " ".join(chooser.choice(WORDS) for _ in range(words))
    return f"You are the support assistant of company number {tenant}. Rules: {body}."


def chat(system: str, question: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def cache_counters(replicas: list[VLLMReplica]) -> tuple[float, float]:
    """Prompt tokens the servers looked up in their prefix caches, and those found, so far."""
    totals = {"vllm:prefix_cache_queries_total": 0.0, "vllm:prefix_cache_hits_total": 0.0}
    for replica in replicas:
        for line in httpx.get(f"{replica.url}/metrics", timeout=10).text.splitlines():
            name = line.split("{", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["vllm:prefix_cache_queries_total"], totals["vllm:prefix_cache_hits_total"]


async def closed_loop(
    base_url: str, key: str, bodies: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[list[RequestResult], float]:
    """``--clients`` clients, each sending the next body as soon as its last answer ended, for ``--seconds``."""
    url = base_url + "/v1/chat/completions"
    results: list[RequestResult] = []
    queue = iter(bodies)
    deadline = time.perf_counter() + args.seconds
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=600, headers={"authorization": f"Bearer {key}"}) as http:

        async def client() -> None:
            while time.perf_counter() < deadline:
                results.append(await stream_chat(http, url, next(queue)))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        return results, time.perf_counter() - start


def row(results: list[RequestResult], wall: float, lookups: float, hits: float) -> dict[str, Any]:
    answered = [r for r in results if r.ok]
    first_tokens = [r.ttft_s for r in answered if r.ttft_s is not None]
    return {
        "requests": len(results),
        "failed": len(results) - len(answered),
        "ttft_p50_s": percentile(first_tokens, 50),
        "ttft_p99_s": percentile(first_tokens, 99),
        "latency_p50_s": percentile([r.latency_s for r in answered], 50),
        "requests_per_s": len(answered) / wall,
        "output_tokens_per_s": sum(r.completion_tokens for r in answered) / wall,
        "cache_hit_rate": hits / lookups if lookups else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--prefix-words", type=int, default=850, help="words of each tenant's system prompt")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40.0, help="of load per policy and round")
    parser.add_argument("--rounds", type=int, default=2, help="each policy runs this many times, in turns")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--kv-blocks", type=int, default=0, help="KV blocks per server; 0: half the prompts' worth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    model_dir = prepare_default_model(EngineSettings()).resolve()
    systems = [system_prompt(tenant, args.prefix_words) for tenant in range(args.tenants)]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prefix_tokens = max(
        len(tokenizer.apply_chat_template(chat(s, "?", 1)["messages"], return_dict=True)["input_ids"]) for s in systems
    )
    half = math.ceil(args.tenants / 2 * prefix_tokens / BLOCK_TOKENS) + args.clients // 2
    blocks = args.kv_blocks or max(half, MAX_MODEL_LEN // BLOCK_TOKENS + 1)  # room for one longest request, +1 spare
    print(f"{args.tenants} prompts of ~{prefix_tokens} tokens; {blocks} KV blocks of {BLOCK_TOKENS} per server")
    chooser = random.Random(args.seed)
    bodies = [
        chat(chooser.choice(systems), chooser.choice(PROMPTS), args.max_tokens) for _ in range(100_000)
    ]  # the same sequence for every policy

    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # for /reset_prefix_cache between policies
    override = ("--num-gpu-blocks-override", str(blocks))
    replicas = [
        VLLMReplica(
            loadgen.free_port(), core, results_dir / f"prefix-routing-vllm-{core}.log", MODEL, extra_args=override
        )
        for core in (0, 1)
    ]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as data_dir, upstream_replicas(replicas, model_dir, data_dir) as settings:
        key = ""
        runs: dict[str, list[tuple[list[RequestResult], float, float, float]]] = {}
        order = ["warm-up", *[p for _ in range(args.rounds) for p in args.policies.split(",")]]
        for policy in order:  # the policies in turns, so the machine's other load falls on each alike
            for replica in replicas:
                httpx.post(f"{replica.url}/reset_prefix_cache", timeout=30).raise_for_status()
            loadgen.wait_until_quiet()
            routing = "round-robin" if policy == "warm-up" else policy
            log = results_dir / f"prefix-routing-gateway-{policy}.log"
            with loadgen.running_gateway({**settings, "LLMAAS_UPSTREAM_ROUTING": routing}, log, MODEL, 120) as gateway:
                key = key or loadgen.create_tenant_key(gateway.base_url, ADMIN_KEY, "bench")
                lookups, hits = cache_counters(replicas)
                results, wall = asyncio.run(closed_loop(gateway.base_url, key, bodies, args))
                after = cache_counters(replicas)
            runs.setdefault(policy, []).append((results, wall, after[0] - lookups, after[1] - hits))
            print(f"{policy}: {json.dumps(row(*runs[policy][-1]))}", flush=True)
        runs.pop("warm-up")  # the servers' first requests of each shape are slow (kernels compiled)
        for policy, done in runs.items():
            rows[policy] = row([r for run in done for r in run[0]], *(sum(run[i] for run in done) for i in (1, 2, 3)))

    print(
        f"\n{args.tenants} tenants' system prompts of ~{prefix_tokens} tokens, 2 vLLM CPU servers of {blocks} KV "
        f"blocks each, {args.clients} clients, {args.max_tokens} tokens each, {args.rounds} x {args.seconds:.0f} s a "
        "policy (in turns, after a warm-up); "
        f"{describe(facts)}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}\n"
    )
    print("| routing | TTFT p50 / p99 (s) | latency p50 (s) | requests/s | output tok/s | cache hit rate | failed |")
    print("|---|---|---|---|---|---|---|")
    for policy, result in rows.items():
        print(
            f"| {policy} | {result['ttft_p50_s']:.2f} / {result['ttft_p99_s']:.2f} | {result['latency_p50_s']:.2f} "
            f"| {result['requests_per_s']:.2f} | {result['output_tokens_per_s']:.1f} "
            f"| {100 * result['cache_hit_rate']:.0f} % | {result['failed']} |"
        )
    if "prefix-aware" in rows and "least-busy" in rows:
        ratio = rows["prefix-aware"]["ttft_p50_s"] / rows["least-busy"]["ttft_p50_s"]
        print(f"\nprefix-aware TTFT p50 = {ratio:.2f} x least-busy (target <= 0.7)")
    output = results_dir / "prefix_routing.json"
    output.write_text(
        json.dumps(
            {
                "machine": facts,
                "kv_blocks": blocks,
                "args": vars(args) | {"results_dir": str(results_dir)},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
