"""Serving benchmark: our gateway vs. bare vLLM vs. a naive transformers server, same model, same load.

Run it (on a quiet machine: the servers run one after another and share its cores with nothing else)::

    .venv/bin/python bench/serving_compare.py

It serves one model three ways, one server at a time:

* ``ours``: our gateway, ``python -m gateway.cli serve`` (vLLM's in-process ``AsyncLLM`` behind FastAPI);
* ``vllm``: vLLM's own OpenAI server, ``python -m vllm.entrypoints.openai.api_server``, given the engine
  settings our gateway uses by default (``engine/settings.py``: bf16, max_model_len 2048, max_num_seqs 64,
  enforce_eager, seed 0, a 2 GiB CPU KV cache);
* ``naive``: ``bench/naive_server.py``, transformers ``generate`` per request (the tutorial baseline).

Each server is started, waited for until ready, sent one warm-up request, then loaded with ``--clients``
concurrent streaming chat requests (one distinct short question each, greedy, ``max_tokens`` output
tokens forced with ``ignore_eos``), then stopped before the next one starts. For each it measures output
tokens/s (completion tokens from the streams' final usage chunks / wall time of the whole load), p50/p99
end-to-end request latency and p50/p99 time to first content token (TTFT). It prints a Markdown table and
the throughput ratios ours/vllm and ours/naive, and writes ``serving_compare.json``, ``serving_compare.png``
and one server log per server into ``--results-dir`` (default ``bench/results/``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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
    wait_until_ready,
)

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "smollm2-135m-instruct"
SERVERS = ("ours", "vllm", "vllm-nolora", "naive")
LABELS = {
    "ours": "LLMaaS gateway",
    "vllm": "bare vLLM server, LoRA enabled like ours",
    "vllm-nolora": "bare vLLM server, LoRA disabled",
    "naive": "naive transformers",
}
READY_TIMEOUT_S = 300.0
KV_CACHE_SPACE_GIB = 2
BENCH_ADMIN_KEY = "sk-admin-bench-0123456789abcdef"


def api_key_for(name: str, base_url: str) -> str:
    """Our gateway serves tenants only: make one (no limits; auth, admission and metering still run)."""
    return create_tenant_key(base_url, BENCH_ADMIN_KEY, "bench") if name == "ours" else "none"


@dataclass
class ServerResult:
    server: str
    label: str
    startup_s: float
    clients: int
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


def server_command(name: str, model_dir: Path, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start server ``name`` on ``port``."""
    # No stray LLMAAS_* setting may change our gateway's defaults: both vLLM engines must match.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_")}
    env["PYTHONUNBUFFERED"] = "1"
    if name == "ours":
        env.update(
            LLMAAS_MODEL_PATH=str(model_dir),
            LLMAAS_DATA_DIR=str(data_dir),
            LLMAAS_KV_CACHE_SPACE_GIB=str(KV_CACHE_SPACE_GIB),
            LLMAAS_ADMIN_KEY=BENCH_ADMIN_KEY,
        )
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
            defaults.dtype,
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
        command = [sys.executable, str(script), "--model", str(model_dir), "--port", str(port)]
        command += ["--served-model-name", MODEL_ID]
        return command, env
    raise ValueError(f"unknown server {name!r}")


def ready_path(name: str) -> str:
    return "/ready" if name == "ours" else "/health"


async def warm_up(base_url: str, api_key: str, max_tokens: int) -> RequestResult:
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30.0)
    async with httpx.AsyncClient(timeout=timeout, headers={"authorization": f"Bearer {api_key}"}) as client:
        return await stream_chat(client, base_url + "/v1/chat/completions", chat_body("Hello!", max_tokens, MODEL_ID))


def summarize(
    name: str, startup_s: float, results: list[RequestResult], wall: float, clients: int, max_tokens: int
) -> ServerResult:
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    errors = sorted({r.error for r in results if r.error})
    return ServerResult(
        server=name,
        label=LABELS[name],
        startup_s=round(startup_s, 2),
        clients=clients,
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


def bench_server(name: str, model_dir: Path, results_dir: Path, clients: int, max_tokens: int) -> ServerResult:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = results_dir / f"serving_compare-{name}.log"
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as data_dir, log_path.open("wb") as log:
        command, env = server_command(name, model_dir, port, Path(data_dir))
        print(f"[{name}] starting on port {port} (log: {log_path})", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until_ready(proc, base_url, ready_path(name), READY_TIMEOUT_S, MODEL_ID)
            startup_s = time.perf_counter() - started
            print(f"[{name}] ready after {startup_s:.1f} s; warming up", flush=True)
            api_key = api_key_for(name, base_url)
            warm = asyncio.run(warm_up(base_url, api_key, max_tokens))
            if not warm.ok:
                raise RuntimeError(f"warm-up request failed: {warm.error}")
            print(f"[{name}] load: {clients} clients x {max_tokens} tokens", flush=True)
            bodies = [chat_body(PROMPTS[i % len(PROMPTS)], max_tokens, MODEL_ID) for i in range(clients)]
            results, wall = asyncio.run(run_load(base_url, api_key, bodies))
        finally:
            stop_server(proc)
        print(f"[{name}] stopped", flush=True)
    result = summarize(name, startup_s, results, wall, clients, max_tokens)
    for error in result.errors:
        print(f"[{name}] request error: {error}", flush=True)
    return result


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def ratios(results: dict[str, ServerResult]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    ours = results.get("ours")
    for other in ("vllm", "vllm-nolora", "naive"):
        base = results.get(other)
        if ours is not None and base is not None:
            key = f"ours/{other}"
            out[key] = ours.throughput_tok_s / base.throughput_tok_s if base.throughput_tok_s else None
    return out


def markdown_table(results: dict[str, ServerResult], ratio: dict[str, float | None]) -> str:
    lines = [
        "| server | ok/total | completion tokens | wall (s) | output tok/s | latency p50 (s) | "
        "latency p99 (s) | TTFT p50 (ms) | TTFT p99 (ms) | startup (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        lines.append(
            f"| {r.label} (`{r.server}`) | {r.ok}/{r.ok + r.failed} | {r.completion_tokens} | "
            f"{r.wall_s:.2f} | {r.throughput_tok_s:.1f} | {_fmt(r.latency_p50_s)} | {_fmt(r.latency_p99_s)} | "
            f"{_fmt(r.ttft_p50_s, 1000, 0)} | {_fmt(r.ttft_p99_s, 1000, 0)} | {r.startup_s:.1f} |"
        )
    if ratio:
        lines.append("")
        for key, value in ratio.items():
            lines.append(f"- throughput {key}: {_fmt(value)}x")
    return "\n".join(lines)


def plot(results: dict[str, ServerResult], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.label for r in results.values()]
    rows = list(results.values())
    colors = ["tab:blue", "tab:orange", "tab:gray"][: len(rows)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    bars = axes[0].bar(names, [r.throughput_tok_s for r in rows], color=colors)
    axes[0].bar_label(bars, fmt="%.0f")
    axes[0].set_title("output tokens/s (higher is better)")
    for ax, (key, title_) in zip(
        axes[1:], [("latency", "end-to-end latency (s)"), ("ttft", "time to first token (s)")], strict=True
    ):
        width = 0.38
        xs = range(len(rows))
        p50 = [getattr(r, f"{key}_p50_s") or 0.0 for r in rows]
        p99 = [getattr(r, f"{key}_p99_s") or 0.0 for r in rows]
        b50 = ax.bar([x - width / 2 for x in xs], p50, width, label="p50")
        b99 = ax.bar([x + width / 2 for x in xs], p99, width, label="p99")
        ax.bar_label(b50, fmt="%.2f", fontsize=8)
        ax.bar_label(b99, fmt="%.2f", fontsize=8)
        ax.set_xticks(list(xs), names)
        ax.set_title(f"{title_} (lower is better)")
        ax.legend()
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
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
    parser.add_argument("--clients", type=int, default=32, help="Concurrent streaming requests.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Output tokens per request (ignore_eos).")
    parser.add_argument(
        "--only",
        default=",".join(SERVERS),
        help=f"Comma-separated subset of {','.join(SERVERS)}, run in that order.",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SERVERS]
    if unknown or not args.only:
        parser.error(f"--only: unknown server(s) {unknown}; choose from {','.join(SERVERS)}")
    if args.clients < 1 or args.max_tokens < 1:
        parser.error("--clients and --max-tokens must be at least 1")
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

    results: dict[str, ServerResult] = {}
    failures: dict[str, str] = {}
    for name in args.only:
        try:
            results[name] = bench_server(name, model_dir, results_dir, args.clients, args.max_tokens)
        except Exception as exc:  # report it and go on with the next server
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] FAILED: {failures[name]}", flush=True)

    ratio = ratios(results)
    print()
    print(
        f"## Serving comparison: {model_dir.name}, {args.clients} concurrent streaming clients x "
        f"{args.max_tokens} output tokens (ignore_eos), {os.cpu_count()} CPUs"
    )
    print()
    print(markdown_table(results, ratio))
    for name, failure in failures.items():
        print(f"- `{name}` failed: {failure}")

    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_dir": str(model_dir),
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "results": {name: asdict(r) for name, r in results.items()},
        "throughput_ratios": ratio,
        "failures": failures,
    }
    json_path = results_dir / "serving_compare.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    png_path = results_dir / "serving_compare.png"
    if results:
        plot(
            results,
            f"{model_dir.name}: {args.clients} concurrent streams x {args.max_tokens} tokens, {os.cpu_count()} CPUs",
            png_path,
        )
    print(f"\nwrote {json_path}" + (f" and {png_path}" if results else ""))
    return 1 if failures or any(r.failed for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
