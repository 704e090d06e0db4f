"""Serving benchmark: our gateway vs. bare vLLM vs. a naive transformers server, same model, same dtype,
same load, at several concurrencies.

Run it (on a quiet machine: the servers run one after another and share its cores with nothing else)::

    .venv/bin/python bench/serving_compare.py                 # 1, 4 and 32 concurrent streams

It serves one model three ways, one server at a time:

* ``ours``: our gateway, ``python -m gateway.cli serve`` (vLLM's in-process ``AsyncLLM`` behind FastAPI),
  with its defaults: the dtype and thread layout it chooses for this machine (``engine/hardware.py``);
* ``vllm``: vLLM's own OpenAI server, ``python -m vllm.entrypoints.openai.api_server``, given our gateway's
  engine settings (``engine/settings.py``: the same resolved dtype, max_model_len 2048, max_num_seqs 64,
  enforce_eager, seed 0, a 2 GiB CPU KV cache) and vLLM's own thread layout; ``vllm-nolora`` without LoRA;
* ``naive``: ``bench/naive_server.py``, transformers ``generate`` per request (the tutorial baseline), in the
  same dtype;
* our gateway's variants, by name in ``--only``: ``ours-float`` (float weights, no speculation: the
  defaults before int8 and speculation), ``ours-int8`` (int8 weights alone),
  ``ours-w8a8`` (int8 weights and activations), ``ours-spec`` (``LLMAAS_SPECULATION=ngram``), ``ours-int8-spec``.

Each server is started, waited for until ready, sent one warm-up request and given until the CPUs are idle (our
gateway's embedded fine-tuning worker imports its libraries at start); then, for each concurrency ``c`` of
``--concurrency``, it gets ``c`` concurrent streaming chat requests (one distinct short question each, greedy,
``max_tokens`` output tokens forced with ``ignore_eos``; ``--workload extraction``: a short document in each prompt,
which the answer copies out, the case prompt-lookup speculation is for), repeated in rounds until at least
``--min-requests`` requests were served (so 1 stream is measured over 8 requests in a row). For each server and
concurrency it measures output tokens/s (completion tokens from the streams' final usage chunks / wall time of the
rounds), p50/p99 end-to-end latency and p50/p99 time to first content token (TTFT). It prints the machine (CPU
model, ISA, native bf16, cores, dtype, thread layout), a Markdown table with the roofline (``bench/roofline.py``:
the limit for each row's weights, dtype and streams, and the share of it reached; with speculation a step may yield
several tokens, so its share can pass 100 %; and beside it the limit with the prompts' prefill counted, their tokens
by the model's chat template: ``roofline.prefill_seconds``), the split of one stream's time per output token into
reading the weights and the per-step overhead, and the ratios ours/naive and ours/vllm per concurrency, and writes
``serving_compare.json``, ``serving_compare.png`` and one server log per server into ``--results-dir`` (default
``bench/results/``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import roofline
from bench.loadgen import (
    PROMPTS,
    REQUEST_TIMEOUT_S,
    RequestResult,
    chat_body,
    create_tenant_key,
    free_port,
    percentile,
    run_load,
    stop_server,
    stream_chat,
    wait_until_quiet,
    wait_until_ready,
)
from bench.machine import describe, machine
from engine.hardware import detect, resolve_dtype

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "smollm2-135m-instruct"
VARIANTS: dict[str, dict[str, str]] = {
    "ours": {},
    "ours-float": {"LLMAAS_QUANTIZATION": "none", "LLMAAS_SPECULATION": "off"},
    "ours-int8": {"LLMAAS_QUANTIZATION": "int8", "LLMAAS_SPECULATION": "off"},
    "ours-w8a8": {"LLMAAS_QUANTIZATION": "w8a8", "LLMAAS_SPECULATION": "off"},
    "ours-spec": {"LLMAAS_QUANTIZATION": "none", "LLMAAS_SPECULATION": "ngram"},
    "ours-int8-spec": {"LLMAAS_QUANTIZATION": "int8", "LLMAAS_SPECULATION": "ngram"},
}
"""Our gateway's variants: the settings each runs with beside the defaults (and ``--ours-setting``)."""
SERVERS = (*VARIANTS, "vllm", "vllm-nolora", "naive")
DEFAULT_SERVERS = ("ours", "vllm", "vllm-nolora", "naive")
LABELS = {
    "ours": "LLMaaS gateway",
    "ours-float": "LLMaaS gateway, float weights, no speculation",
    "ours-int8": "LLMaaS gateway, int8 weights",
    "ours-w8a8": "LLMaaS gateway, int8 weights and activations",
    "ours-spec": "LLMaaS gateway, n-gram speculation",
    "ours-int8-spec": "LLMaaS gateway, int8 weights, n-gram speculation",
    "vllm": "bare vLLM server, LoRA enabled like ours",
    "vllm-nolora": "bare vLLM server, LoRA disabled",
    "naive": "naive transformers",
}
READY_TIMEOUT_S = 300.0
KV_CACHE_SPACE_GIB = 2
BENCH_ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
RATIOS = (("naive", 1), ("vllm", 4), ("vllm", 32), ("vllm-nolora", 32))
"""(other server, concurrency): the comparisons the README quotes, where both were measured."""


EXTRACTION_DOCUMENTS = [
    "The library opens at nine in the morning and closes at six in the evening from Monday to Friday. On "
    "Saturdays it opens at ten and closes at four. It is closed on Sundays and on public holidays.",
    "Order 4471 was shipped on March 3 from the warehouse in Leeds. It contains two blue chairs, one oak table "
    "and a box of screws. The customer asked for delivery to the back door of the shop.",
    "To reset the router, hold the small button on its back for ten seconds until the light turns orange. Wait "
    "two minutes, then connect to the network named HOME-5G with the password printed under the router.",
    "The meeting on Thursday moves from room 12 to the large hall on the ground floor. Lunch is served at half "
    "past twelve. Please bring your laptop and the printed budget for the second quarter.",
    "Anna Berg joined the company in 2019 as a data analyst. In 2022 she became the head of the reporting team, "
    "which has six members. She speaks Swedish, English and German.",
    "The recipe needs three eggs, two cups of flour, one cup of milk and a pinch of salt. Mix the dry parts "
    "first, then add the eggs and the milk, and bake for twenty minutes at 180 degrees.",
    "Flight KL 1234 leaves Amsterdam at 07:45 and lands in Oslo at 09:30. Passengers may take one bag of up to "
    "eight kilograms into the cabin. Check-in closes forty minutes before departure.",
    "The new parking rules start on the first of June. Residents park free with a permit; visitors pay two "
    "euros an hour between eight and eight. Cars without a permit may be towed at night.",
]
"""The extraction workload's documents: each prompt asks for one copied out, so the answer repeats the prompt."""
WORKLOADS = ("chat", "extraction")


def workload_prompts(workload: str) -> list[str]:
    """The prompts of a workload: short questions (chat), or a short document to copy out (extraction)."""
    if workload == "chat":
        return PROMPTS
    return [
        f"Copy the following text exactly, word for word, and write nothing else.\n\n{doc}"
        for doc in EXTRACTION_DOCUMENTS
    ]


def is_ours(name: str) -> bool:
    return name in VARIANTS


def served_quantization(run: ServerRun) -> roofline.Quantization:
    """The weights a server ran with (the roofline's case): what our gateway's ``/ready`` said; others unquantized."""
    value = run.engine.get("quantization", "none")
    return "w8a8" if value == "w8a8" else "int8" if value == "int8" else "none"


def api_key_for(name: str, base_url: str) -> str:
    """Our gateway serves tenants only: make one (no limits; auth, admission and metering still run)."""
    return create_tenant_key(base_url, BENCH_ADMIN_KEY, "bench") if is_ours(name) else "none"


@dataclass
class LoadResult:
    server: str
    label: str
    concurrency: int
    max_tokens: int
    ok: int
    failed: int
    completion_tokens: int
    usage_reported: int
    wall_s: float
    throughput_tok_s: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    errors: list[str] = field(default_factory=list)
    limit_tok_s: float | None = None
    """The roofline's limit for this case (``bench/roofline.py``): weights, dtype and streams."""
    limit_bound: str | None = None
    prompt_tokens: int = 0
    """The prompts' tokens of every request sent (the model's chat template counted)."""
    limit_with_prefill_tok_s: float | None = None
    """The limit with the prompts' prefilling counted (``roofline.prefill_seconds``) beside decoding: completion
    tokens / (their decode time at ``limit_tok_s`` + the prefill time of every prompt sent)."""


@dataclass
class ServerRun:
    server: str
    startup_s: float
    engine: dict[str, Any]
    """What the server says of its engine (ours: dtype, hardware and thread layout from ``/ready``)."""
    loads: list[LoadResult]


def server_command(
    name: str, model_dir: Path, port: int, data_dir: Path, dtype: str, ours_settings: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start server ``name`` on ``port``."""
    # No stray LLMAAS_* setting may change our gateway's defaults: both vLLM engines must match.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_")}
    env["PYTHONUNBUFFERED"] = "1"
    if is_ours(name):
        env.update(
            LLMAAS_MODEL_PATH=str(model_dir),
            LLMAAS_DATA_DIR=str(data_dir),
            LLMAAS_KV_CACHE_SPACE_GIB=str(KV_CACHE_SPACE_GIB),
            LLMAAS_ADMIN_KEY=BENCH_ADMIN_KEY,
            LLMAAS_DTYPE=dtype,
        )
        env.update(VARIANTS[name])
        env.update(ours_settings)
        return [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)], env
    if name in ("vllm", "vllm-nolora"):
        from engine.settings import EngineSettings

        # Our gateway's defaults, not the environment's: the same engine for both.
        defaults = EngineSettings.model_construct()
        env["VLLM_CPU_KVCACHE_SPACE"] = str(KV_CACHE_SPACE_GIB)
        # vLLM as it ships: our LoRA-kernel plugin (installed in this venv) stays out of its processes.
        env["LLMAAS_LORA_KERNELS"] = "vllm"
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL_ID,
            "--dtype",
            dtype,
            "--max-model-len",
            str(defaults.max_model_len),
            "--max-num-seqs",
            str(defaults.max_num_seqs),
            "--seed",
            str(defaults.seed),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if defaults.enforce_eager:
            command.append("--enforce-eager")
        if defaults.enable_lora and name == "vllm":  # our gateway serves adapters: the same engine for both
            command += ["--enable-lora", "--max-loras", str(defaults.max_loras)]
            command += ["--max-lora-rank", str(defaults.max_lora_rank), "--max-cpu-loras", str(defaults.max_cpu_loras)]
        return command, env
    if name == "naive":
        script = REPO / "bench" / "naive_server.py"
        command = [sys.executable, str(script), "--model", str(model_dir), "--port", str(port), "--dtype", dtype]
        command += ["--served-model-name", MODEL_ID]
        return command, env
    raise ValueError(f"unknown server {name!r}")


def ready_path(name: str) -> str:
    return "/ready" if is_ours(name) else "/health"


def engine_facts(name: str, base_url: str, dtype: str) -> dict[str, Any]:
    if not is_ours(name):
        return {"dtype": dtype, "threads": "vLLM's default" if name.startswith("vllm") else "torch's default"}
    engines = httpx.get(base_url + "/ready", timeout=10.0).json()["engines"]
    return dict(engines.get(MODEL_ID, {}))


async def warm_up(base_url: str, api_key: str, max_tokens: int) -> RequestResult:
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, headers={"authorization": f"Bearer {api_key}"}) as client:
        return await stream_chat(client, base_url + "/v1/chat/completions", chat_body("Hello!", max_tokens, MODEL_ID))


def summarize(name: str, results: list[RequestResult], wall: float, concurrency: int, max_tokens: int) -> LoadResult:
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    errors = sorted({r.error for r in results if r.error})
    return LoadResult(
        server=name,
        label=LABELS[name],
        concurrency=concurrency,
        max_tokens=max_tokens,
        ok=len(ok),
        failed=len(results) - len(ok),
        completion_tokens=tokens,
        usage_reported=sum(r.usage_reported for r in ok),
        wall_s=wall,
        throughput_tok_s=tokens / wall if wall > 0 else 0.0,
        latency_p50_s=percentile([r.latency_s for r in ok], 50),
        latency_p99_s=percentile([r.latency_s for r in ok], 99),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        errors=errors,
    )


def rounds_of(prompts: Sequence[str], concurrency: int, min_requests: int) -> list[list[str]]:
    """The prompts of each round of a load: ``concurrency`` at once, until ``min_requests`` were sent, the
    workload's prompts in turn."""
    count = math.ceil(min_requests / concurrency)
    return [[prompts[(r * concurrency + i) % len(prompts)] for i in range(concurrency)] for r in range(count)]


def prompt_lengths(model_dir: Path, prompts: Sequence[str]) -> dict[str, int]:
    """Each prompt's tokens as every server counts them: the model's chat template around one user message."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = {}
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        lengths[prompt] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return lengths


def run_level(
    base_url: str, api_key: str, rounds: Sequence[Sequence[str]], max_tokens: int
) -> tuple[list[RequestResult], float]:
    """Each round's prompts as concurrent streams, one round after another; the rounds' walls add up."""
    results: list[RequestResult] = []
    wall = 0.0
    for prompts in rounds:
        bodies = [chat_body(prompt, max_tokens, MODEL_ID) for prompt in prompts]
        round_results, round_wall = asyncio.run(run_load(base_url, api_key, bodies))
        results += round_results
        wall += round_wall
    return results, wall


def bench_server(name: str, model_dir: Path, results_dir: Path, args: argparse.Namespace, dtype: str) -> ServerRun:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = results_dir / f"serving_compare-{name}.log"
    loads: list[LoadResult] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as data_dir, log_path.open("wb") as log:
        command, env = server_command(name, model_dir, port, Path(data_dir), dtype, args.ours_setting)
        print(f"[{name}] starting on port {port} (log: {log_path})", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_ready(proc, base_url, ready_path(name), READY_TIMEOUT_S, MODEL_ID)
            startup_s = time.perf_counter() - started
            engine = engine_facts(name, base_url, dtype)
            print(f"[{name}] ready after {startup_s:.1f} s ({engine}); warming up", flush=True)
            api_key = api_key_for(name, base_url)
            warm = asyncio.run(warm_up(base_url, api_key, args.max_tokens))
            if not warm.ok:
                raise RuntimeError(f"warm-up request failed: {warm.error}")
            print(f"[{name}] machine quiet after {wait_until_quiet():.0f} s", flush=True)
            prompts = workload_prompts(args.workload)
            lengths = prompt_lengths(model_dir, prompts)
            for concurrency in args.concurrency:
                print(f"[{name}] load: {concurrency} streams x {args.max_tokens} tokens", flush=True)
                rounds = rounds_of(prompts, concurrency, args.min_requests)
                results, wall = run_level(base_url, api_key, rounds, args.max_tokens)
                loads.append(summarize(name, results, wall, concurrency, args.max_tokens))
                loads[-1].prompt_tokens = sum(lengths[prompt] for round_ in rounds for prompt in round_)
                for error in loads[-1].errors:
                    print(f"[{name}] request error: {error}", flush=True)
        finally:
            stop_server(proc)
        print(f"[{name}] stopped", flush=True)
    return ServerRun(name, round(startup_s, 2), engine, loads)


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def _load(runs: dict[str, ServerRun], server: str, concurrency: int) -> LoadResult | None:
    run = runs.get(server)
    return next((load for load in run.loads if load.concurrency == concurrency), None) if run else None


def ratios(runs: dict[str, ServerRun]) -> dict[str, dict[str, float | None]]:
    """Per comparison of ``RATIOS`` that was measured: ours/other output tok/s and TTFT p50."""
    out: dict[str, dict[str, float | None]] = {}
    for other, concurrency in RATIOS:
        ours, base = _load(runs, "ours", concurrency), _load(runs, other, concurrency)
        if ours is None or base is None:
            continue
        out[f"ours/{other} at {concurrency}"] = {
            "throughput": ours.throughput_tok_s / base.throughput_tok_s if base.throughput_tok_s else None,
            "ttft_p50": ours.ttft_p50_s / base.ttft_p50_s if ours.ttft_p50_s and base.ttft_p50_s else None,
        }
    return out


def add_limits(runs: dict[str, ServerRun], model_dir: Path, dtype: str, context: int) -> None:
    """Each load's roofline limit (``bench/roofline.py``) for its server's weights, the dtype and its streams."""
    for run in runs.values():
        for load in run.loads:
            quantization = served_quantization(run)
            rows = int(run.engine["int8_max_rows"]) if "int8_max_rows" in run.engine else None
            limit = roofline.limits(model_dir, dtype, quantization, load.concurrency, context, int8_rows=rows)
            load.limit_tok_s, load.limit_bound = limit.tok_s, limit.bound
            requests = load.ok + load.failed
            if not load.prompt_tokens or not load.completion_tokens:
                continue
            prefill_s = roofline.prefill_seconds(
                model_dir, dtype, quantization, load.prompt_tokens, requests, int8_rows=rows
            )
            if prefill_s is not None:
                decode_s = load.completion_tokens / limit.tok_s
                load.limit_with_prefill_tok_s = load.completion_tokens / (decode_s + prefill_s)


def token_split(runs: dict[str, ServerRun], model_dir: Path, dtype: str) -> list[dict[str, Any]]:
    """At one stream, per server: the time per output token after the first (median latency minus median TTFT,
    over the other tokens) = reading the weights once (bytes per token / measured bandwidth) + the rest, the
    per-step overhead (scheduling, Python and dispatch per op, sampling, detokenizing, streaming). With
    speculation a step may yield several tokens: its time per token can be under the weight reading."""
    split = []
    for run in runs.values():
        load = _load(runs, run.server, 1)
        if load is None or load.latency_p50_s is None or load.ttft_p50_s is None or load.max_tokens < 2:
            continue
        per_token = (load.latency_p50_s - load.ttft_p50_s) / (load.max_tokens - 1)
        weights = roofline.limits(model_dir, dtype, served_quantization(run), 1).weight_read_s
        split.append(
            {
                "server": run.server,
                "per_token_s": per_token,
                "weight_read_s": weights,
                "overhead_s": per_token - weights,
            }
        )
    return split


def split_table(split: list[dict[str, Any]]) -> str:
    lines = [
        "| server (1 stream) | time per output token (ms) | reading the weights (ms) | per-step overhead (ms) | "
        "overhead share |",
        "|---|---|---|---|---|",
    ]
    for row in split:
        share = row["overhead_s"] / row["per_token_s"] if row["per_token_s"] > 0 else 0.0
        lines.append(
            f"| `{row['server']}` | {row['per_token_s'] * 1000:.1f} | {row['weight_read_s'] * 1000:.1f} | "
            f"{row['overhead_s'] * 1000:.1f} | {share:.0%} |"
        )
    return "\n".join(lines)


def markdown_table(runs: dict[str, ServerRun], ratio: dict[str, dict[str, float | None]]) -> str:
    lines = [
        "| streams | server | ok/total | output tok/s | limit tok/s (bound) | share of limit | "
        "prefill counted: limit tok/s, share | latency p50 (s) | latency p99 (s) | TTFT p50 (ms) | TTFT p99 (ms) | "
        "startup (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    levels = sorted({load.concurrency for run in runs.values() for load in run.loads})
    for concurrency in levels:
        for run in runs.values():
            r = _load(runs, run.server, concurrency)
            if r is None:
                continue
            limit = "n/a" if r.limit_tok_s is None else f"{r.limit_tok_s:.0f} ({r.limit_bound})"
            share = "n/a" if not r.limit_tok_s else f"{r.throughput_tok_s / r.limit_tok_s:.0%}"
            with_prefill = r.limit_with_prefill_tok_s
            prefill = "n/a" if not with_prefill else f"{with_prefill:.0f}, {r.throughput_tok_s / with_prefill:.0%}"
            lines.append(
                f"| {concurrency} | {r.label} (`{r.server}`) | {r.ok}/{r.ok + r.failed} | "
                f"{r.throughput_tok_s:.1f} | {limit} | {share} | {prefill} | {_fmt(r.latency_p50_s)} | "
                f"{_fmt(r.latency_p99_s)} | "
                f"{_fmt(r.ttft_p50_s, 1000, 0)} | {_fmt(r.ttft_p99_s, 1000, 0)} | {run.startup_s:.1f} |"
            )
    if ratio:
        lines.append("")
        for key, value in ratio.items():
            lines.append(f"- {key}: output tok/s {_fmt(value['throughput'])}x, TTFT p50 {_fmt(value['ttft_p50'])}x")
    return "\n".join(lines)


def plot(runs: dict[str, ServerRun], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({load.concurrency for run in runs.values() for load in run.loads})
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    width = 0.8 / max(len(runs), 1)
    for index, run in enumerate(runs.values()):
        xs = [level + 0.0 for level in range(len(levels))]
        loads = [_load(runs, run.server, level) for level in levels]
        offset = [x - 0.4 + width * (index + 0.5) for x in xs]
        tok = axes[0].bar(offset, [r.throughput_tok_s if r else 0.0 for r in loads], width, label=run.server)
        axes[0].bar_label(tok, fmt="%.0f", fontsize=7)
        ttft = axes[1].bar(offset, [(r.ttft_p50_s or 0.0) if r else 0.0 for r in loads], width, label=run.server)
        axes[1].bar_label(ttft, fmt="%.2f", fontsize=7)
    for ax, heading in zip(axes, ("output tokens/s (higher is better)", "TTFT p50, s (lower is better)"), strict=True):
        ax.set_xticks(range(len(levels)), [f"{level} streams" for level in levels])
        ax.set_title(heading)
        ax.legend(fontsize=8)
    fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="A Hugging Face model dir (default: the prepared default model, engine.model_prep).",
    )
    parser.add_argument("--concurrency", default="1,4,32", help="Comma-separated numbers of concurrent streams.")
    parser.add_argument("--min-requests", type=int, default=8, help="Requests per concurrency at least (rounds).")
    parser.add_argument("--max-tokens", type=int, default=64, help="Output tokens per request (ignore_eos).")
    parser.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="Every server's dtype (auto: what our gateway chooses for this machine).",
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SERVERS),
        help=f"Comma-separated subset of {','.join(SERVERS)}, run in that order (the int8 and speculation "
        "variants of ours need those settings in engine/settings.py).",
    )
    parser.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="chat",
        help="chat: short questions; extraction: a short document in the prompt, copied out in the answer.",
    )
    parser.add_argument(
        "--no-roofline", action="store_true", help="Leave out the roofline column (no measuring of the machine)."
    )
    parser.add_argument(
        "--ours-setting",
        action="append",
        default=[],
        metavar="LLMAAS_NAME=VALUE",
        help="A setting for our gateway (repeatable), to measure an option against the defaults.",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    settings = [item.partition("=") for item in args.ours_setting]
    if any(not name.startswith("LLMAAS_") or not sep for name, sep, _ in settings):
        parser.error("--ours-setting: LLMAAS_NAME=VALUE")
    args.ours_setting = {name: value for name, _, value in settings}
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SERVERS]
    if unknown or not args.only:
        parser.error(f"--only: unknown server(s) {unknown}; choose from {','.join(SERVERS)}")
    try:
        args.concurrency = sorted({int(level) for level in args.concurrency.split(",") if level.strip()})
    except ValueError:
        parser.error("--concurrency: comma-separated whole numbers")
    if not args.concurrency or min(args.concurrency) < 1 or args.max_tokens < 1 or args.min_requests < 1:
        parser.error("--concurrency, --min-requests and --max-tokens must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from engine.model_prep import prepare_default_model
        from engine.settings import EngineSettings

        model_dir = prepare_default_model(EngineSettings())
    else:
        model_dir = args.model
    model_dir = model_dir.resolve()
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    facts = machine()
    dtype = resolve_dtype(args.dtype, detect())
    dtype = "bfloat16" if dtype == "auto" else dtype  # a GPU: the model's own dtype, which is bf16 here
    print(f"machine: {describe(facts)}; dtype {dtype}", flush=True)
    if not args.no_roofline:  # measured (or read from its cache) now, while no server runs
        print("roofline: reading its cache, or measuring this machine (minutes, once)", flush=True)
        roofline.load(model_dir, rows=sorted({*roofline.ROWS, *args.concurrency}))

    runs: dict[str, ServerRun] = {}
    failures: dict[str, str] = {}
    for name in args.only:
        try:
            runs[name] = bench_server(name, model_dir, results_dir, args, dtype)
        except Exception as exc:  # report it and go on with the next server
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] FAILED: {failures[name]}", flush=True)

    ratio = ratios(runs)
    split: list[dict[str, Any]] = []
    if not args.no_roofline:
        add_limits(runs, model_dir, dtype, context=args.max_tokens + 64)  # about the prompt and half the answer
        split = token_split(runs, model_dir, dtype)
    heading = (
        f"{model_dir.name}, {args.workload} workload, {args.max_tokens} output tokens per stream (ignore_eos), {dtype}"
    )
    print()
    print(f"## Serving comparison: {heading}")
    print(f"machine: {describe(facts)}")
    for run in runs.values():
        print(f"- `{run.server}` engine: {run.engine}")
    if args.ours_setting:
        print(f"- `ours` settings: {args.ours_setting}")
    print()
    print(markdown_table(runs, ratio))
    if split:
        print()
        print("Time per output token at one stream: reading the weights vs the per-step overhead")
        print()
        print(split_table(split))
    for name, failure in failures.items():
        print(f"- `{name}` failed: {failure}")

    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_dir": str(model_dir),
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "dtype": dtype,
        "workload": args.workload,
        "ours_settings": args.ours_setting,
        "token_split": split,
        "machine": facts,
        "runs": {name: asdict(run) for name, run in runs.items()},
        "ratios": ratio,
        "failures": failures,
    }
    json_path = results_dir / "serving_compare.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    png_path = results_dir / "serving_compare.png"
    if runs:
        plot(runs, f"{heading}; {describe(facts)}", png_path)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if runs else ""))
    failed = any(load.failed for run in runs.values() for load in run.loads)
    return 1 if failures or failed else 0


if __name__ == "__main__":
    sys.exit(main())
