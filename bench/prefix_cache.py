"""Prefix caching in one engine: time to first token and prompt tokens/s with vLLM's automatic prefix caching on
against off (``LLMAAS_PREFIX_CACHING``), on a workload of tenants that each resend their own long system prompt
(target on CPU: cached TTFT p50 at most 0.5x uncached).

    .venv/bin/python bench/prefix_cache.py [--tenants 8] [--rounds 3] [--system-tokens 1000] [--max-tokens 8]
                                           [--results-dir bench/results]

One gateway (``llmaas serve``, the default model, in-process vLLM) per setting, started in turn. Each of
``--tenants`` tenants (its own key) has its own system prompt of about ``--system-tokens`` tokens and asks short
questions (a different one each time, so only the system prompt can come from the cache). Unmeasured, each
tenant asks once (with caching on, its system prompt is then in the KV cache, as it is for a tenant already
talking to the service). Measured: ``--rounds`` rounds of one question per tenant sent one at a time (TTFT
p50/p99; prompt tok/s = prompt tokens / summed TTFT, the prefill rate a lone request sees), then one burst of
every tenant's question at once (prompt tok/s = prompt tokens / wall time). The hit rate is the share of prompt
tokens the engine reported as cached (``usage.prompt_tokens_details.cached_tokens``). It prints a Markdown table
beside the machine (CPU, ISA, dtype) and writes ``prefix_cache.json`` into ``--results-dir``. Waits for a quiet
machine before each run; numbers taken while other work runs are noise. The upstream comparison (prefix-aware
routing across replicas) is ``bench/prefix_routing.py``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import (
    PROMPTS,
    create_tenant_key,
    gateway_settings,
    percentile,
    running_gateway,
    wait_until_quiet,
)
from bench.machine import describe, machine

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
TOKENS_PER_RULE = 20
"""About what one rule of a system prompt takes in the default model's tokenizer."""


@dataclass
class Answer:
    ttft_s: float
    prompt_tokens: int
    cached_tokens: int


def system_prompt(tenant: int, tokens: int) -> str:
    """Tenant ``tenant``'s own instructions, about ``tokens`` long, different from the first token on."""
    rules = " ".join(
        f"Rule {tenant}.{i}: for questions on subject {i * 7 + tenant}, answer briefly and politely."
        for i in range(tokens // TOKENS_PER_RULE)
    )
    return f"Company {tenant} assistant. {rules}"


async def ask(client: openai.AsyncOpenAI, system: str, question: str, max_tokens: int) -> Answer:
    start = time.perf_counter()
    ttft: float | None = None
    usage = None
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - start
        usage = chunk.usage or usage
    if ttft is None or usage is None:
        raise SystemExit("a stream ended without content or usage")
    details = usage.prompt_tokens_details
    return Answer(ttft, usage.prompt_tokens, (details.cached_tokens or 0) if details else 0)


async def measure(clients: list[openai.AsyncOpenAI], systems: list[str], args: argparse.Namespace) -> dict[str, Any]:
    questions = iter(PROMPTS * (args.rounds + 2))
    await asyncio.gather(*(ask(c, s, next(questions), args.max_tokens) for c, s in zip(clients, systems, strict=True)))
    one_by_one = [
        await ask(client, system, next(questions), args.max_tokens)
        for _ in range(args.rounds)
        for client, system in zip(clients, systems, strict=True)
    ]
    start = time.perf_counter()
    burst = await asyncio.gather(
        *(ask(c, s, next(questions), args.max_tokens) for c, s in zip(clients, systems, strict=True))
    )
    wall = time.perf_counter() - start
    ttfts = [answer.ttft_s for answer in one_by_one]
    answers = one_by_one + list(burst)
    return {
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "prompt_tok_s": sum(a.prompt_tokens for a in one_by_one) / sum(ttfts),
        "burst_prompt_tok_s": sum(a.prompt_tokens for a in burst) / wall,
        "burst_ttft_p50_s": percentile([a.ttft_s for a in burst], 50),
        "hit_rate": sum(a.cached_tokens for a in answers) / sum(a.prompt_tokens for a in answers),
        "answers": [asdict(answer) for answer in answers],
    }


def run(caching: bool, model_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as data_dir:
        settings = gateway_settings(model_path, data_dir, ADMIN_KEY) | {
            "LLMAAS_EMBEDDING_MODEL": "",
            "LLMAAS_KV_CACHE_SPACE_GIB": "1",
            "LLMAAS_PREFIX_CACHING": str(caching).lower(),
        }
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL) as gateway:
            keys = [create_tenant_key(gateway.base_url, ADMIN_KEY, f"bench-prefix-{i}") for i in range(args.tenants)]
            clients = [openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, timeout=900) for key in keys]
            systems = [system_prompt(i, args.system_tokens) for i in range(args.tenants)]
            if not args.no_wait:
                print(f"machine quiet after {wait_until_quiet():.0f} s", flush=True)
            result = asyncio.run(measure(clients, systems, args))
    return {"prefix_caching": caching, **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, default in (("--tenants", 8), ("--rounds", 3), ("--system-tokens", 1000), ("--max-tokens", 8)):
        parser.add_argument(option, type=int, default=default)
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (a smoke run)")
    args = parser.parse_args(argv)
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    model_path = prepare_default_model(EngineSettings()).resolve()
    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    runs = [run(caching, model_path, args) for caching in (False, True)]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "prefix_cache.json").write_text(json.dumps({"machine": facts, "runs": runs}, indent=2))
    print(f"\n{describe(facts)}; {args.tenants} tenants, ~{args.system_tokens}-token system prompts\n")
    print(table(runs))
    return 0


def table(runs: list[dict[str, Any]]) -> str:
    """The Markdown table of the runs (caching off, then on), and the ratio the target is about."""
    lines = [
        "| prefix caching | TTFT p50 (s) | TTFT p99 (s) | prompt tok/s | burst prompt tok/s | burst TTFT p50 (s) "
        "| cache hit rate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {'on' if r['prefix_caching'] else 'off'} | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} "
        f"| {r['prompt_tok_s']:.0f} | {r['burst_prompt_tok_s']:.0f} | {r['burst_ttft_p50_s']:.3f} "
        f"| {r['hit_rate']:.0%} |"
        for r in runs
    ]
    off, on = runs
    return (
        "\n".join(lines)
        + f"\n\ncached TTFT p50 / uncached: {on['ttft_p50_s'] / off['ttft_p50_s']:.2f}x (target <= 0.5x)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
