"""Structured outputs: output tokens/s of JSON-schema-constrained generation against unconstrained generation,
through our gateway on the real model, at 1 and 32 concurrent streams (target: constrained at least 0.8x unconstrained
at 32).

    .venv/bin/python bench/structured_outputs.py [--streams 1 32] [--max-tokens 128] [--results-dir bench/results]

One gateway (``llmaas serve``, the default model, in-process vLLM). For each stream count, unconstrained first,
then constrained: every stream asks for a list of records under a JSON schema (``response_format`` json_schema)
that keeps it generating to ``--max-tokens`` (``ignore_eos``, as the other throughput benches do, so both runs
produce the same number of tokens); the schema is sent once before the runs, so its grammar compile (checked by
the gateway, then compiled by the engine, both cached) is not measured. It prints a Markdown table beside the
machine (CPU, ISA, dtype) and writes ``structured_outputs.json`` into ``--results-dir``. Waits for a quiet
machine before each run; numbers taken while other work runs are noise."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import PROMPTS, chat_body, create_tenant_key, run_load, running_gateway, wait_until_quiet
from bench.machine import describe, machine

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "facts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "topic": {"type": "string", "maxLength": 40},
                    "score": {"type": "integer", "minimum": 0, "maximum": 100},
                    "kind": {"enum": ["science", "history", "art", "other"]},
                },
                "required": ["topic", "score", "kind"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["facts"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "facts", "schema": SCHEMA, "strict": True}}


def bodies(streams: int, max_tokens: int, constrained: bool) -> list[dict[str, Any]]:
    result = []
    for i in range(streams):
        body = chat_body(f"List facts about this, as JSON: {PROMPTS[i % len(PROMPTS)]}", max_tokens, MODEL)
        if constrained:
            body["response_format"] = RESPONSE_FORMAT
        result.append(body)
    return result


def measure(base_url: str, key: str, streams: int, max_tokens: int, constrained: bool) -> dict[str, Any]:
    results, wall = asyncio.run(run_load(base_url, key, bodies(streams, max_tokens, constrained)))
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {failed[0]}")
    tokens = sum(r.completion_tokens for r in results)
    return {"streams": streams, "constrained": constrained, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (a smoke run)")
    args = parser.parse_args(argv)
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-structured-") as data_dir:
        settings = {
            "LLMAAS_MODEL_PATH": str(prepare_default_model(EngineSettings()).resolve()),
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_EMBEDDED_WORKER": "false",
            "LLMAAS_LOG_LEVEL": "warning",
        }
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL) as gateway:
            key = create_tenant_key(gateway.base_url, ADMIN_KEY, "bench-structured")
            measure(gateway.base_url, key, 1, 4, constrained=True)  # the grammar compiled and cached, unmeasured
            for streams in args.streams:
                for constrained in (False, True):
                    if not args.no_wait:
                        print(f"machine quiet after {wait_until_quiet():.0f} s", flush=True)
                    rows.append(measure(gateway.base_url, key, streams, args.max_tokens, constrained))
                    print(json.dumps(rows[-1]), flush=True)
    print(f"\n{describe(facts)}\n")
    print("| streams | unconstrained tok/s | json_schema tok/s | ratio |\n|---:|---:|---:|---:|")
    for streams in args.streams:
        free, bound = (r["tok_s"] for r in rows if r["streams"] == streams)
        print(f"| {streams} | {free:.1f} | {bound:.1f} | {bound / free:.2f}x |")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "structured_outputs.json").write_text(json.dumps({"machine": facts, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
