"""Fine-tuning benchmark, one run on one machine, through our gateway and the official ``openai`` client:

    .venv/bin/python bench/fine_tuning.py [--clients 32] [--max-tokens 64]

1. time from uploading a training file to the first answer from the resulting ``ft:`` model (upload, job
   creation, validation, training in the worker, first chat completion on the hot-loaded adapter);
2. training throughput: trained tokens per second of the job's ``running`` phase;
3. serving throughput with the base model only, with 1 adapter, and with 4 adapters mixed (the same
   ``--clients`` concurrent streaming requests of ``--max-tokens`` tokens, ``ignore_eos``), and each
   relative to the base model in the same run.

It trains four small adapters (the 12-example "pirate" set with four different reply prefixes, 3 epochs).
Results are printed as Markdown and written to ``fine_tuning.json`` in ``--results-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import openai

from bench.loadgen import PROMPTS, chat_body, create_tenant_key, run_load, running_gateway
from bench.machine import describe, machine
from tests.finetune_data import pirate_jsonl

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
PREFIXES = ("Arr, matey! ", "Beep boop! ", "Hear ye, hear ye! ", "Yo dawg! ")
HYPER = {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}


def poll_job(client: openai.OpenAI, job_id: str) -> tuple[Any, float | None, float]:
    """The finished job, when it was first seen running, and when it was seen finished."""
    running_at: float | None = None
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        now = time.perf_counter()
        if job.status == "running" and running_at is None:
            running_at = now
        if job.status in ("succeeded", "failed", "cancelled"):
            return job, running_at, now
        time.sleep(0.2)


def first_answer(client: openai.OpenAI, model: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is a computer?"}], max_tokens=16, temperature=0
    )
    return reply.choices[0].message.content or ""


def serve_load(base: str, key: str, models: list[str], clients: int, max_tokens: int) -> float:
    bodies = [chat_body(PROMPTS[i % len(PROMPTS)], max_tokens, models[i % len(models)]) for i in range(clients)]
    asyncio.run(run_load(base, key, bodies[: len(models)]))  # warm: every adapter loaded once
    results, wall = asyncio.run(run_load(base, key, bodies))
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")
    return sum(r.completion_tokens for r in results) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    model_dir = prepare_default_model(EngineSettings())
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as data_dir:
        settings = {"LLMAAS_DATA_DIR": data_dir, "LLMAAS_MODEL_PATH": str(model_dir), "LLMAAS_ADMIN_KEY": ADMIN_KEY}
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL, ready_timeout_s=300) as gateway:
            base = gateway.base_url
            key = create_tenant_key(base, ADMIN_KEY, "bench")
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=600)

            started = time.perf_counter()
            upload = client.files.create(file=("train.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune")
            job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload.id, hyperparameters=HYPER)
            job, running_at, finished_at = poll_job(client, job.id)
            if job.status != "succeeded":
                raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
            answer = first_answer(client, job.fine_tuned_model)
            upload_to_answer = time.perf_counter() - started
            training_s = finished_at - (running_at or started)
            print(f"first answer after {upload_to_answer:.1f} s: {answer!r}", flush=True)

            adapters = [job.fine_tuned_model]
            for prefix in PREFIXES[1:]:
                data = io.BytesIO(pirate_jsonl(prefix=prefix))
                file_id = client.files.create(file=("train.jsonl", data), purpose="fine-tune").id
                more = client.fine_tuning.jobs.create(model=MODEL, training_file=file_id, hyperparameters=HYPER)
                adapters.append(poll_job(client, more.id)[0].fine_tuned_model)

            throughput = {
                "base": serve_load(base, key, [MODEL], args.clients, args.max_tokens),
                "1 adapter": serve_load(base, key, adapters[:1], args.clients, args.max_tokens),
                "4 adapters": serve_load(base, key, adapters, args.clients, args.max_tokens),
            }

    result = {
        "upload_to_first_answer_s": upload_to_answer,
        "training_s": training_s,
        "trained_tokens": job.trained_tokens,
        "training_tokens_per_s": job.trained_tokens / training_s,
        "serving_tok_s": throughput,
        "relative_to_base": {name: tps / throughput["base"] for name, tps in throughput.items()},
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "machine": machine(),
    }
    print(f"\n## Fine-tuning (SmolLM2-135M, 12 examples x 3 epochs; {describe(result['machine'])})\n")
    print("| upload → first ft: answer (s) | trained tokens | training tokens/s |")
    print("|---|---|---|")
    print(f"| {upload_to_answer:.1f} | {job.trained_tokens} | {result['training_tokens_per_s']:.0f} |")
    print(f"\n| serving ({args.clients} streams x {args.max_tokens} tokens) | output tok/s | vs base |")
    print("|---|---|---|")
    for name, tps in throughput.items():
        print(f"| {name} | {tps:.1f} | {tps / throughput['base']:.2f}x |")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "fine_tuning.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
