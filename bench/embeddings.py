"""Embeddings benchmark: embeddings/s through our gateway (``POST /v1/embeddings``: auth, admission, metering,
vLLM's pooling runner) vs the same model in ``sentence-transformers`` directly, at several batch sizes.

Run it (on a quiet machine: the two run one after the other and share its cores with nothing else)::

    .venv/bin/python bench/embeddings.py                  # batch 1 and 64

The model is all-MiniLM-L6-v2 from its wheel (``engine.model_prep.prepare_embedding_model``). First our gateway
(``llmaas serve``, the chat model idle beside it, the thread layout it chooses for this machine, and by default
fp32 like sentence-transformers: ``--dtype auto`` gives its own choice, bf16 on a CPU with native bf16) gets,
for each batch size ``b`` of ``--batch``, requests of ``b`` short sentences one after another (base64 vectors, as
the official SDK asks) until at least ``--min-inputs`` inputs were embedded, after one warm-up request; then the
gateway is stopped and ``SentenceTransformer.encode`` embeds the same batches in this process (fp32, torch's
threads on every core, ``normalize_embeddings``). It prints the machine (CPU model, ISA, native bf16, cores,
dtype, thread layout), a Markdown table of embeddings/s and the ratio ours / direct per batch size (target at
64: at least 1.0), and writes ``embeddings.json`` into ``--results-dir``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import PROMPTS, create_tenant_key, running_gateway, wait_until_quiet
from bench.machine import describe, machine
from engine.model_prep import prepare_default_model, prepare_embedding_model
from engine.settings import DEFAULT_EMBEDDING_MODEL_ID, EngineSettings

REPO = Path(__file__).resolve().parents[1]
BENCH_ADMIN_KEY = "sk-admin-bench-0123456789abcdef"


def sentences(count: int, offset: int) -> list[str]:
    """``count`` distinct short sentences (the load generator's questions, numbered)."""
    return [f"{PROMPTS[(offset + i) % len(PROMPTS)]} ({offset + i})" for i in range(count)]


def measure(embed: Callable[[list[str]], int], batch: int, min_inputs: int) -> float:
    """Embeddings/s of ``embed`` over batches of ``batch`` sentences, after one warm-up batch."""
    embed(sentences(batch, 0))
    done, rounds = 0, 0
    started = time.perf_counter()
    while done < min_inputs:
        rounds += 1
        done += embed(sentences(batch, rounds * batch))
    return done / (time.perf_counter() - started)


def bench_gateway(
    model_dir: Path, chat_dir: Path, batches: Sequence[int], min_inputs: int, dtype: str, log: Path
) -> dict[int, float]:
    settings = {
        "LLMAAS_DATA_DIR": tempfile.mkdtemp(prefix="bench-embeddings-"),
        "LLMAAS_ADMIN_KEY": BENCH_ADMIN_KEY,
        "LLMAAS_MODEL_PATH": str(chat_dir),
        "LLMAAS_EMBEDDING_MODEL": str(model_dir),
        "LLMAAS_EMBEDDED_WORKER": "false",
        "LLMAAS_DTYPE": dtype,
        "LLMAAS_LOG_LEVEL": "warning",
    }
    results = {}
    with running_gateway(settings, log, DEFAULT_EMBEDDING_MODEL_ID) as gateway:
        key = create_tenant_key(gateway.base_url, BENCH_ADMIN_KEY, "bench")
        wait_until_quiet()
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=600) as client:

            def embed(texts: list[str]) -> int:
                body = {"model": DEFAULT_EMBEDDING_MODEL_ID, "input": texts, "encoding_format": "base64"}
                response = client.post("/v1/embeddings", json=body)
                response.raise_for_status()
                return len(response.json()["data"])

            for batch in batches:
                results[batch] = measure(embed, batch, min_inputs)
                print(f"[ours] batch {batch}: {results[batch]:.1f} embeddings/s", flush=True)
    return results


def bench_direct(model_dir: Path, batches: Sequence[int], min_inputs: int) -> dict[int, float]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    results = {}
    for batch in batches:

        def embed(texts: list[str], size: int = batch) -> int:
            return len(model.encode(texts, batch_size=size, normalize_embeddings=True))

        results[batch] = measure(embed, batch, min_inputs)
        print(f"[sentence-transformers] batch {batch}: {results[batch]:.1f} embeddings/s", flush=True)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="1,64", help="comma-separated batch sizes (inputs per request)")
    parser.add_argument("--min-inputs", type=int, default=512, help="inputs embedded per batch size, at least")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "auto"], help="our gateway's (LLMAAS_DTYPE)"
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        args.batch = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error("--batch: comma-separated whole numbers")
    if not args.batch or min(args.batch) < 1 or max(args.batch) > 2048 or args.min_inputs < 1:
        parser.error("--batch must lie in [1, 2048], --min-inputs at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cache = EngineSettings(data_dir=Path(os.environ.get("LLMAAS_TEST_MODEL_CACHE", REPO / ".data" / "test-cache")))
    model_dir, chat_dir = prepare_embedding_model(cache), prepare_default_model(cache)
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    log = results_dir / "embeddings-gateway.log"
    ours = bench_gateway(model_dir, chat_dir, args.batch, args.min_inputs, args.dtype, log)
    direct = bench_direct(model_dir, args.batch, args.min_inputs)
    print()
    heading = f"{DEFAULT_EMBEDDING_MODEL_ID}, embeddings/s (at least {args.min_inputs} inputs each)"
    print(f"## Embeddings: {heading}; ours in {args.dtype}, sentence-transformers in float32")
    print(f"machine: {describe(facts)}")
    print("| batch | ours (gateway) | sentence-transformers | ours / direct |")
    print("|---:|---:|---:|---:|")
    rows: list[dict[str, Any]] = []
    for batch in args.batch:
        ratio = ours[batch] / direct[batch]
        print(f"| {batch} | {ours[batch]:.1f} | {direct[batch]:.1f} | {ratio:.2f}x |")
        rows.append({"batch": batch, "ours": ours[batch], "direct": direct[batch], "ratio": ratio})
    (results_dir / "embeddings.json").write_text(
        json.dumps({"machine": facts, "dtype": args.dtype, "results": rows}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
