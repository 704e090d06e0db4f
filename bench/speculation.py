"""Speculative decoding (vLLM's n-gram prompt lookup, ``LLMAAS_SPECULATION``) against none, in our gateway: output
tok/s, TTFT and the draft acceptance rate at 1, 4 and 32 streams, on a chat workload and on an extraction workload
(each prompt holds a document; the answer copies from it), greedy (target on extraction: >= 1.5x the tok/s of the
same mode without speculation).

    .venv/bin/python bench/speculation.py [--variants off,k2,k4,k6,k4-max4] [--streams 1,4,32] [--rounds 2]
                                          [--max-tokens 64] [--model-path DIR] [--results-dir bench/results]

One gateway (``llmaas serve``, the default model, in-process vLLM, fp32 unless ``--dtype`` says otherwise) per
variant, started in turn; ``--rounds`` rounds over the variants, so a variant's numbers are spread over the run
(the machine's other load lands on all of them alike). Variants: ``off``; ``kN``: ngram with N draft tokens at any
batch size; ``kN-maxM``: the same, drafting only while at most M sequences run (``LLMAAS_SPECULATION_MAX_STREAMS``).
In each gateway, per workload and stream count: one unmeasured request (warm-up), then the workload's prompts in
batches of ``streams`` sent at once (at least ``--requests`` requests): output tok/s = completion tokens / wall time
of the batches, TTFT p50 over the requests, acceptance = accepted / drafted tokens (``llmaas_speculation_*`` in
the gateway's ``/metrics``), tokens per step = tokens / (tokens - accepted drafts): the engine steps speculation
saves, whatever else runs on the machine (on few streams a step with drafts to check costs about one without, so
this is the speedup a quiet machine can reach there). Greedy outputs are the same with and without speculation, so
every variant produces the same tokens: tok/s ratios are wall-time ratios. Prints a Markdown table beside the
machine line and writes ``speculation.json`` into ``--results-dir``."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import (
    PROMPTS,
    chat_body,
    create_tenant_key,
    gateway_settings,
    percentile,
    run_load,
    running_gateway,
)
from bench.machine import describe, machine

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
VARIANT = re.compile(r"^(off|k(\d+)(?:-max(\d+))?)$")
PEOPLE = [
    ("Alice Martin", "14 Rue des Lilas", "Lyon", "69003", "+33 4 72 11 20 45"),
    ("Bruno Keller", "7 Lindenstrasse", "Zurich", "8001", "+41 44 310 22 90"),
    ("Carla Rossi", "22 Via Garibaldi", "Turin", "10122", "+39 011 562 7781"),
    ("David Okafor", "5 Marina Road", "Lagos", "101241", "+234 1 270 4410"),
    ("Emma Larsen", "31 Havnegade", "Copenhagen", "1058", "+45 33 12 80 16"),
    ("Farid Haddad", "9 Rue Hamra", "Beirut", "1103", "+961 1 345 678"),
    ("Grace Chen", "88 Nathan Road", "Hong Kong", "999077", "+852 2366 1180"),
    ("Hugo Silva", "120 Avenida Paulista", "Sao Paulo", "01310", "+55 11 3251 4400"),
]


@dataclass(frozen=True)
class Variant:
    name: str
    tokens: int  # 0: off
    max_streams: int  # 0: at any batch size

    def settings(self) -> dict[str, str]:
        if not self.tokens:
            return {"LLMAAS_SPECULATION": "off"}
        return {
            "LLMAAS_SPECULATION": "ngram",
            "LLMAAS_SPECULATIVE_TOKENS": str(self.tokens),
            "LLMAAS_SPECULATION_MAX_STREAMS": str(self.max_streams),
        }


def variant(name: str) -> Variant:
    match = VARIANT.match(name)
    if match is None:
        raise argparse.ArgumentTypeError(f"{name!r}: a variant is off, kN or kN-maxM")
    return Variant(name, int(match[2] or 0), int(match[3] or 0))


def document(index: int) -> tuple[str, tuple[str, str, str, str, str]]:
    """A customer list (the people in an order that depends on ``index``) and the person asked about."""
    people = PEOPLE[index % len(PEOPLE) :] + PEOPLE[: index % len(PEOPLE)]
    lines = [
        f"Customer {name}: lives at {street}, {postcode} {city}; phone {phone}; order #{4100 + index * 7 + n}."
        for n, (name, street, city, postcode, phone) in enumerate(people)
    ]
    return "\n".join(lines), people[(index * 3) % len(people)]


def extraction_prompts(count: int) -> list[str]:
    """Questions whose answer copies from the document: an address, or a record as JSON."""
    prompts = []
    for index in range(count):
        text, (name, *_) = document(index)
        if index % 2:
            ask = (
                f"Extract the record of {name} from the text as JSON with the keys name, street, postcode, city "
                "and phone, copying each value exactly."
            )
        else:
            ask = f"Copy the line about {name} from the text exactly, then nothing else."
        prompts.append(f"Text:\n{text}\n\n{ask}")
    return prompts


def bodies(workload: str, count: int, max_tokens: int) -> list[dict[str, Any]]:
    if workload == "chat":  # the serving benchmarks' chat load: max_tokens tokens each (ignore_eos)
        return [chat_body(PROMPTS[i % len(PROMPTS)], max_tokens, MODEL) for i in range(count)]
    # Extraction: the answer as long as the model makes it (greedy, the same tokens in every variant).
    return [chat_body(prompt, max_tokens, MODEL) | {"ignore_eos": False} for prompt in extraction_prompts(count)]


def speculation_counts(base_url: str) -> tuple[float, float]:
    """Draft tokens proposed and accepted so far (0, 0 without speculation)."""
    text = httpx.get(f"{base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("llmaas_spec")
    }
    return (
        values.get("llmaas_speculation_draft_tokens_total", 0.0),
        values.get("llmaas_speculation_accepted_tokens_total", 0.0),
    )


async def measure(base_url: str, key: str, workload: str, streams: int, args: argparse.Namespace) -> dict[str, Any]:
    batches = max(1, -(-args.requests // streams))
    work = bodies(workload, batches * streams, args.max_tokens)
    await run_load(base_url, key, work[:1])  # warm-up: the first request of a shape pays for more than its tokens
    drafted, accepted = speculation_counts(base_url)
    results, wall = [], 0.0
    for start in range(0, len(work), streams):
        batch, seconds = await run_load(base_url, key, work[start : start + streams])
        results += batch
        wall += seconds
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")
    drafted_after, accepted_after = speculation_counts(base_url)
    tokens = sum(r.completion_tokens for r in results)
    return {
        "workload": workload,
        "streams": streams,
        "requests": len(results),
        "completion_tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "ttft_p50_s": percentile([r.ttft_s for r in results if r.ttft_s is not None], 50),
        "drafted": drafted_after - drafted,
        "accepted": accepted_after - accepted,
    }


def run(chosen: Variant, args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-spec-") as data_dir:
        settings = gateway_settings(args.model_path, data_dir, ADMIN_KEY) | {
            "LLMAAS_EMBEDDING_MODEL": "",
            "LLMAAS_KV_CACHE_SPACE_GIB": "1",
            "LLMAAS_DTYPE": args.dtype,
            **chosen.settings(),
        }
        started = time.monotonic()
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL) as gateway:
            print(f"{chosen.name}: ready in {time.monotonic() - started:.0f} s", flush=True)
            key = create_tenant_key(gateway.base_url, ADMIN_KEY, f"bench-spec-{chosen.name}")
            rows = []
            for workload in args.workloads:
                for streams in args.streams:
                    measured = asyncio.run(measure(gateway.base_url, key, workload, streams, args))
                    row = {"variant": chosen.name, **measured}
                    print(f"  {workload:10} {streams:3} streams: {row['tok_s']:7.1f} tok/s", flush=True)
                    rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], variants: list[Variant]) -> list[dict[str, Any]]:
    """Per variant, workload and stream count: the rounds added up (tok/s = tokens / wall time over them)."""
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["variant"], row["workload"], row["streams"])
        into = merged.setdefault(key, {"tokens": 0, "wall_s": 0.0, "ttfts": [], "drafted": 0.0, "accepted": 0.0})
        into["tokens"] += row["completion_tokens"]
        into["wall_s"] += row["wall_s"]
        into["ttfts"].append(row["ttft_p50_s"])
        into["drafted"] += row["drafted"]
        into["accepted"] += row["accepted"]
    out = []
    for (name, workload, streams), data in merged.items():
        base = merged.get(("off", workload, streams))
        tok_s = data["tokens"] / data["wall_s"]
        out.append(
            {
                "variant": name,
                "workload": workload,
                "streams": streams,
                "tok_s": tok_s,
                "vs_off": tok_s / (base["tokens"] / base["wall_s"]) if base else None,
                "ttft_p50_s": percentile(data["ttfts"], 50),
                "acceptance": data["accepted"] / data["drafted"] if data["drafted"] else None,
                # A sequence's steps: its tokens less the accepted drafts (each step emits one token of its own).
                # An upper bound: drafts accepted and then cut (end of text, stop, max_tokens) count as accepted.
                "tokens_per_step": data["tokens"] / max(data["tokens"] - data["accepted"], 1),
            }
        )
    order = {v.name: i for i, v in enumerate(variants)}
    return sorted(out, key=lambda r: (r["workload"], r["streams"], order[r["variant"]]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | streams | variant | output tok/s | vs off | TTFT p50 (s) | acceptance | tokens/step |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row['vs_off']:.2f}x" if row["vs_off"] is not None else "-"
        acceptance = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
        lines.append(
            f"| {row['workload']} | {row['streams']} | {row['variant']} | {row['tok_s']:.1f} | {ratio} "
            f"| {row['ttft_p50_s']:.3f} | {acceptance} | {row['tokens_per_step']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=lambda s: [variant(v) for v in s.split(",")], default="off,k2,k4,k6")
    parser.add_argument("--streams", type=lambda s: [int(v) for v in s.split(",")], default="1,4,32")
    parser.add_argument("--workloads", type=lambda s: s.split(","), default="chat,extraction")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=4, help="at least this many requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32", help="the model's dtype (LLMAAS_DTYPE); float32 on every CPU")
    parser.add_argument("--model-path", type=Path, default=None, help="default: the default model, prepared once")
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if args.model_path is None:
        from engine.model_prep import prepare_default_model
        from engine.settings import EngineSettings

        args.model_path = prepare_default_model(EngineSettings())
    args.model_path = args.model_path.resolve()
    facts = machine()
    print(f"machine: {describe(facts)}", flush=True)
    rows = [row for _ in range(args.rounds) for chosen in args.variants for row in run(chosen, args)]
    merged = summary(rows, args.variants)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "speculation.json").write_text(
        json.dumps({"machine": facts, "summary": merged, "runs": rows}, indent=2)
    )
    print(f"\n{describe(facts)}; {args.dtype}, greedy, max_tokens {args.max_tokens}, {args.rounds} rounds\n")
    print(table(merged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
