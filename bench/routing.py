"""Adapter-aware routing against round robin and least-busy, on real vLLM servers.

    .venv/bin/python bench/routing.py [--adapters 4] [--clients 16] [--seconds 60] [--max-tokens 32]

Two CPU vLLM OpenAI servers (one core each, ``--max-loras 2``: two distinct adapters per batch) behind our
gateway (``LLMAAS_ENGINE=upstream``), and more fine-tuned models than one server's ``max_loras`` (random
rank-16 LoRA adapters of SmolLM2, registered as a tenant's ``ft:`` models). For each routing policy, in turn,
with every adapter unloaded from both servers first: ``--clients`` clients stream chat completions for
``--seconds``, each request for a model drawn at random (seeded, the same sequence for every policy). A server
whose batch needs a third adapter makes that request wait, so where a policy sends an adapter decides the
throughput. Prints a Markdown table (output tok/s, requests/s, latency and TTFT p50/p99, adapter loads) and
draws ``routing.png``; writes ``routing.json`` into ``--results-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import (
    PROMPTS,
    RequestResult,
    chat_body,
    create_tenant_key,
    free_port,
    percentile,
    running_gateway,
    stream_chat,
    wait_until_quiet,
)
from bench.machine import describe, machine
from engine.upstream.local_server import VLLMReplica

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
POLICIES = ("adapter-aware", "least-busy", "round-robin")


@contextmanager
def upstream_replicas(replicas: list[VLLMReplica], model_dir: Path, data_dir: str) -> Iterator[dict[str, str]]:
    """The replicas started and ready (killed when the block ends); the settings of a gateway in front of them."""
    try:
        for replica in replicas:
            replica.log.unlink(missing_ok=True)
            replica.start(model_dir)
        for replica in replicas:
            replica.wait_ready()
        yield {
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_MODEL_PATH": str(model_dir),
            "LLMAAS_ENGINE": "upstream",
            "LLMAAS_EMBEDDED_WORKER": "false",
            "LLMAAS_LOG_LEVEL": "warning",
            "LLMAAS_UPSTREAM_URLS": ",".join(r.url for r in replicas),
        }
    finally:
        for replica in replicas:
            replica.stop()


def make_adapters(model_dir: Path, data_dir: Path, tenant_id: str, count: int) -> list[str]:
    """``count`` random LoRA adapters, saved where the worker would put them and registered as the tenant's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gateway.app import adapter_registry
    from gateway.bootstrap import open_database
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(data_dir=data_dir)
    database = open_database(settings)
    registry = adapter_registry(database, settings)
    names = []
    for index in range(count):
        torch.manual_seed(index)
        config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
        job_id = f"ftjob-{uuid.uuid4().hex}"
        adapter_dir = registry.job_dir(job_id) / "adapter"
        model.save_pretrained(adapter_dir)
        name = f"ft:{MODEL}:bench:a{index}:{job_id[6:14]}"
        with database.sessions.begin() as session:
            registry.register(
                session, name=name, tenant_id=tenant_id, base_model=MODEL, job_id=job_id, adapter_dir=adapter_dir
            )
        names.append(name)
    database.dispose()
    return names


async def load(
    base_url: str, key: str, models: list[str], args: argparse.Namespace
) -> tuple[list[RequestResult], float]:
    """``--clients`` clients, each sending its next request as soon as the last one ended, for ``--seconds``."""
    url = base_url + "/v1/chat/completions"
    chooser = random.Random(args.seed)
    order = [(chooser.choice(models), chooser.choice(PROMPTS)) for _ in range(100_000)]
    cursor = 0
    results: list[RequestResult] = []
    deadline = time.perf_counter() + args.seconds
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=300, headers={"authorization": f"Bearer {key}"}) as http:

        async def client() -> None:
            nonlocal cursor
            while time.perf_counter() < deadline:
                model, prompt = order[cursor]
                cursor += 1
                results.append(await stream_chat(http, url, chat_body(prompt, args.max_tokens, model)))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.clients)))
        wall = time.perf_counter() - start
    return results, wall


def summarize(results: list[RequestResult], wall: float, loads: int) -> dict[str, Any]:
    done = [r for r in results if r.ok]
    latencies = [r.latency_s for r in done]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    return {
        "requests": len(results),
        "failed": len(results) - len(done),
        "output_tokens_per_s": sum(r.completion_tokens for r in done) / wall,
        "requests_per_s": len(done) / wall,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "adapter_loads": loads,
    }


def adapter_loads(base_url: str) -> int:
    """Adapter loads the gateway made into its servers (``llmaas_upstream_adapter_loads_total``)."""
    metrics = httpx.get(f"{base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    lines = [line for line in metrics.splitlines() if line.startswith("llmaas_upstream_adapter_loads_total")]
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines))


def plot(rows: dict[str, dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    throughput.bar(names, [rows[n]["output_tokens_per_s"] for n in names], color=["#2a7", "#58c", "#c85"])
    throughput.set_ylabel("output tokens/s")
    throughput.set_title("throughput")
    positions = range(len(names))
    latency.bar([p - 0.2 for p in positions], [rows[n]["latency_p50_s"] for n in names], 0.4, label="p50")
    latency.bar([p + 0.2 for p in positions], [rows[n]["latency_p99_s"] for n in names], 0.4, label="p99")
    latency.set_xticks(list(positions), names)
    latency.set_ylabel("request latency (s)")
    latency.set_title("latency")
    latency.legend()
    figure.suptitle(title.replace("; ", "\n", 1), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=4, help="distinct fine-tuned models (> --max-loras)")
    parser.add_argument("--max-loras", type=int, default=2, help="adapters per batch on each server")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    print(f"machine: {describe(facts)}")
    model_dir = prepare_default_model(EngineSettings()).resolve()
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    replicas = [
        VLLMReplica(
            free_port(), core, results_dir / f"routing-vllm-{core}.log", MODEL, args.max_loras, 2 * args.adapters
        )
        for core in (0, 1)
    ]
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as data_dir, upstream_replicas(replicas, model_dir, data_dir) as settings:
        key = ""
        models: list[str] = []
        for policy in args.policies.split(","):
            for replica in replicas:
                replica.unload_all()
            wait_until_quiet()
            log = results_dir / f"routing-gateway-{policy}.log"
            with running_gateway({**settings, "LLMAAS_UPSTREAM_ROUTING": policy}, log, MODEL, 120) as gateway:
                if not key:
                    key = create_tenant_key(gateway.base_url, ADMIN_KEY, "bench")
                    tenants = httpx.get(
                        f"{gateway.base_url}/admin/v1/tenants", headers={"authorization": f"Bearer {ADMIN_KEY}"}
                    ).json()["data"]
                    tenant_id = next(t["id"] for t in tenants if t["name"] == "bench")
                    models = make_adapters(model_dir, Path(data_dir), tenant_id, args.adapters)
                results, wall = asyncio.run(load(gateway.base_url, key, models, args))
                loads = adapter_loads(gateway.base_url)
            rows[policy] = summarize(results, wall, loads)
            print(f"{policy}: {json.dumps(rows[policy])}", flush=True)

    title = (
        f"{args.adapters} fine-tuned models over 2 vLLM CPU servers (max_loras {args.max_loras}), {args.clients} "
        f"clients, {args.max_tokens} tokens each; {describe(facts)}"
    )
    print(f"\n{title}\n")
    print(
        "| routing | output tok/s | requests/s | latency p50 / p99 (s) | TTFT p50 / p99 (s) | adapter loads | failed |"
    )
    print("|---|---|---|---|---|---|---|")
    for policy, row in rows.items():
        print(
            f"| {policy} | {row['output_tokens_per_s']:.1f} | {row['requests_per_s']:.2f} "
            f"| {row['latency_p50_s']:.2f} / {row['latency_p99_s']:.2f} "
            f"| {row['ttft_p50_s']:.2f} / {row['ttft_p99_s']:.2f} | {row['adapter_loads']} | {row['failed']} |"
        )
    plot(rows, title, results_dir / "routing.png")
    output = results_dir / "routing.json"
    output.write_text(
        json.dumps({"machine": facts, "args": {**vars(args), "results_dir": str(results_dir)}, "rows": rows}, indent=2)
    )
    print(f"\nwrote {output} and {results_dir / 'routing.png'}")


if __name__ == "__main__":
    main()
