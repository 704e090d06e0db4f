"""Do int8 weights cost the default model its quality? fp32 weights against int8 (``LLMAAS_QUANTIZATION=int8``) and
w8a8, all with the same activations dtype (fp32 by default):

    .venv/bin/python bench/quantization_quality.py [--modes none,int8,w8a8] [--tasks intent,extract,contact]
                                                   [--dtype float32] [--skip-fine-tuning | --skip-perplexity]

1. Perplexity of the served model (vLLM, as we run it) on ``bench/dtype_quality.py``'s fixed English text, and its
   greedy answers to the same short factual questions, once per weight mode. Target: int8 within 2 % of fp32.
2. The fine-tuning quality tasks of ``bench/ft_tasks.py`` through the public API, as ``bench/fine_tuning_quality.py``
   runs them: each task's adapter is trained ONCE (a job with no hyperparameters, on the gateway serving the first
   mode; training always runs against the float base weights), then the same adapter's held-out accuracy is
   measured by an eval on a gateway serving each mode over the same data dir. Target: within 2 held-out examples of
   fp32.

Prints both tables with the machine line and writes ``quantization_quality.json`` to ``--results-dir``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.dtype_quality import Scores, report, score
from bench.fine_tuning_quality import ADMIN_KEY, MODEL, create_eval, fine_tune, run_eval
from bench.ft_tasks import TASKS, Task
from bench.loadgen import create_tenant_key, running_gateway
from bench.machine import describe, machine
from engine.model_prep import prepare_default_model
from engine.settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]
PERPLEXITY_TARGET = 0.02
EXAMPLES_TARGET = 2


def fine_tuned_accuracy(
    model_dir: Path, modes: list[str], tasks: list[str], dtype: str, seed: int, results_dir: Path
) -> list[dict[str, Any]]:
    """Per task: held-out examples right with the same adapter on each mode's base (trained on the first's)."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmaas-quantization-") as data_dir:
        settings = {
            "LLMAAS_MODEL_PATH": str(model_dir),
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_DTYPE": dtype,
            "LLMAAS_EMBEDDING_MODEL": "",
        }
        key = ""
        for mode in modes:
            log_path = results_dir / f"quantization_quality-{mode}-server.log"
            with running_gateway(settings | {"LLMAAS_QUANTIZATION": mode}, log_path, MODEL) as gateway:
                key = key or create_tenant_key(gateway.base_url, ADMIN_KEY, "quantization")
                client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=600)
                if not rows:  # the first mode's gateway trains every adapter once
                    for name in tasks:
                        train, items_file, eval_id = create_eval(client, TASKS[name], seed)
                        job, seconds, _ = fine_tune(client, gateway.base_url, key, Task.jsonl(train), name, seed)
                        held_out = len(TASKS[name].examples(seed=seed)[1])
                        rows.append(
                            {"task": name, "model": job.fine_tuned_model, "items_file": items_file, "eval": eval_id}
                            | {"held_out": held_out, "job_seconds": seconds, "right": {}}
                        )
                        print(f"[{name}] trained in {seconds:.0f} s: {job.fine_tuned_model}", flush=True)
                for row in rows:
                    accuracy = run_eval(client, row["eval"], row["model"], row["items_file"], [])
                    row["right"][mode] = round(accuracy * row["held_out"])
                    print(f"[{row['task']}] {mode}: {row['right'][mode]}/{row['held_out']}", flush=True)
    return rows


def print_perplexity(results: dict[str, Scores]) -> None:
    reference = next(iter(results.values()))[0]
    report(results, "weights")
    print("\n| weights | perplexity vs the first | within 2 % |\n|---|---|---|")
    for mode, (perplexity, _, _) in results.items():
        change = perplexity / reference - 1
        print(f"| {mode} | {change:+.2%} | {'yes' if abs(change) <= PERPLEXITY_TARGET else 'NO'} |")


def print_fine_tuning(rows: list[dict[str, Any]], modes: list[str]) -> None:
    columns = " | ".join(f"{mode}: held-out right" for mode in modes)
    print(f"\n| task | {columns} | within {EXAMPLES_TARGET} of {modes[0]} |")
    print("|---|" + "---|" * (len(modes) + 1))
    for row in rows:
        right = row["right"]
        within = all(abs(right[mode] - right[modes[0]]) <= EXAMPLES_TARGET for mode in modes)
        cells = " | ".join(f"{right[mode]}/{row['held_out']}" for mode in modes)
        print(f"| {row['task']} | {cells} | {'yes' if within else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--modes", default="none,int8,w8a8", help="EngineSettings.quantization values; first: the reference"
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--dtype", default="float32", help="the activations' dtype, the same for every mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-fine-tuning", action="store_true")
    parser.add_argument("--skip-perplexity", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    modes = args.modes.split(",")
    facts = machine()
    model_dir = prepare_default_model(EngineSettings()).resolve()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    perplexity = {} if args.skip_perplexity else {mode: score(model_dir, args.dtype, mode) for mode in modes}
    print(f"\n## Quantization quality ({describe(facts)}; activations {args.dtype}; seed {args.seed})\n")
    if perplexity:
        print_perplexity(perplexity)
    sys.stdout.flush()  # now: the fine-tuning part takes long
    tasks = [] if args.skip_fine_tuning else args.tasks.split(",")
    rows = fine_tuned_accuracy(model_dir, modes, tasks, args.dtype, args.seed, args.results_dir) if tasks else []
    if rows:
        print_fine_tuning(rows, modes)
    result = {
        "machine": facts,
        "dtype": args.dtype,
        "seed": args.seed,
        "perplexity": {mode: {"perplexity": p, "answers": a, "tok_s": t} for mode, (p, a, t) in perplexity.items()},
        "fine_tuning": rows,
    }
    (args.results_dir / "quantization_quality.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
