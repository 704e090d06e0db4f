"""Does fine-tuning with the defaults give a model that does the task? Through the public API only:

    .venv/bin/python bench/fine_tuning_quality.py [--tasks intent,extract,contact] [--seeds 0,1,2]
        [--preference-tasks one_word,bullets,capitals]

For each generated task of ``bench/ft_tasks.py`` (a classification, an extraction and a format-following task,
150 training examples each and 60 test examples from templates no training example uses), against our gateway
(``llmaas serve`` with its embedded worker, on a fresh data dir):

1. upload the training file and a JSONL of test items, make an eval that checks the answer exactly;
2. create a fine-tuning job with **no hyperparameters** and time it from creation to success, probing the gateway
   with a chat request every 2 s meanwhile (inference must stay served while training runs);
3. run the eval on the base model zero-shot, on the base model with five training examples as a few-shot
   prompt, and on the ``ft:`` model.

Each seed (``--seeds``) draws the task's examples and seeds the job: the defaults should hold on every one.

Then for each preference task (``PREFERENCE_TASKS``: 200 pairs that prefer a style the base model does not use,
held-out prompts from templates no pair uses): a supervised job on the preferred answers alone and a DPO job on the
pairs, both with **no hyperparameters** and timed the same way, and the share of held-out prompts each model (and
the base) answers greedily in the preferred style (with the first seed).

It prints two tables (accuracy per task, seed and model, job time, the hyperparameters "auto" chose, the latency of
the probe requests during training, and each task's worst seed; the preferred-style share per preference task and
model, each job's time) with the machine it ran on, and writes ``fine_tuning_quality.json`` and
``fine_tuning_quality.png`` (accuracy per task; training loss curves) to ``--results-dir``.
``bench/continual_learning.py`` runs its steps in another order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.fine_tuning import FineTuningJob

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ft_tasks import PREFERENCE_TASKS, TASKS, Example, PreferenceTask, Task
from bench.loadgen import create_tenant_key, running_gateway
from bench.machine import describe, machine

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
ADMIN_KEY = "sk-admin-quality-0123456789abcdef"
FEW_SHOT = 5
JOB_TIMEOUT_S = 1800


def items_jsonl(examples: list[Example]) -> bytes:
    lines = [
        json.dumps(
            {
                "item": {
                    "system": e["messages"][0]["content"],
                    "input": e["messages"][1]["content"],
                    "answer": e["answer"],
                }
            }
        )
        for e in examples
    ]
    return ("\n".join(lines) + "\n").encode()


def template(shots: list[Example]) -> list[dict[str, str]]:
    """The eval's input messages: the task's instruction, ``shots`` solved examples, then the item."""
    messages = [{"role": "system", "content": "{{item.system}}"}]
    for shot in shots:
        messages += [
            {"role": "user", "content": shot["messages"][1]["content"]},
            {"role": "assistant", "content": shot["answer"]},
        ]
    return [*messages, {"role": "user", "content": "{{item.input}}"}]


def run_eval(client: openai.OpenAI, eval_id: str, model: str, items_file: str, shots: list[Example]) -> float:
    run = client.evals.runs.create(
        eval_id,
        name=f"{model} ({len(shots)}-shot)",
        data_source={
            "type": "completions",
            "model": model,
            "input_messages": {"type": "template", "template": template(shots)},  # type: ignore[typeddict-item]
            "sampling_params": {"temperature": 0, "max_completion_tokens": 48},
            "source": {"type": "file_id", "id": items_file},
        },
    )
    while (run := client.evals.runs.retrieve(run.id, eval_id=eval_id)).status not in ("completed", "failed"):
        time.sleep(1)
    if run.status != "completed":
        raise RuntimeError(f"eval run failed: {run.error}")
    return run.result_counts.passed / max(run.result_counts.total, 1)


class Probe:
    """A chat request every ``every`` seconds while training runs: its latencies."""

    def __init__(self, base: str, key: str, every: float = 2.0) -> None:
        self._base, self._key, self._every = base, key, every
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
        with httpx.Client(base_url=self._base, headers={"authorization": f"Bearer {self._key}"}, timeout=120) as http:
            while not self._stop.wait(self._every):
                started = time.perf_counter()
                if http.post("/v1/chat/completions", json=body).status_code == 200:
                    self.latencies.append(time.perf_counter() - started)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def create_eval(client: openai.OpenAI, task: Task, seed: int) -> tuple[list[Example], str, str]:
    """The task's training examples, its held-out items uploaded as a file, and an eval that checks the answer
    exactly: ``(train, items file id, eval id)``."""
    train, test = task.examples(seed=seed)
    items_file = client.files.create(file=("test.jsonl", items_jsonl(test)), purpose="evals")
    evaluation = client.evals.create(
        name=f"{task.name}: exact answer",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "exact",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "operation": "eq",
            }
        ],
    )
    return train, items_file.id, evaluation.id


def fine_tune(
    client: openai.OpenAI,
    base: str,
    key: str,
    training: bytes,
    suffix: str,
    seed: int,
    method: str = "supervised",
    model: str = MODEL,
) -> tuple[FineTuningJob, float, Probe]:
    """A ``method`` job of ``model`` (the base model, or an ``ft:`` model to continue) on the ``training`` file with
    no hyperparameters, run to success: the job, its seconds, the probe."""
    training_file = client.files.create(file=("train.jsonl", training), purpose="fine-tune")
    started = time.perf_counter()
    with Probe(base, key) as probe:
        job = client.fine_tuning.jobs.create(
            model=model, training_file=training_file.id, suffix=suffix, seed=seed, method={"type": method}
        )
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            if time.perf_counter() - started > JOB_TIMEOUT_S:
                raise TimeoutError(f"job {job.id} still {job.status}")
            time.sleep(1)
    if job.status != "succeeded":
        raise RuntimeError(f"job {job.id} {job.status}: {job.error}")
    return job, time.perf_counter() - started, probe


def bench_task(client: openai.OpenAI, base: str, key: str, task: Task, seed: int) -> dict[str, Any]:
    train, items_file, eval_id = create_eval(client, task, seed)
    job, job_seconds, probe = fine_tune(client, base, key, Task.jsonl(train), task.name, seed)
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    losses = sorted((e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics" and e.data)
    shots = train[:FEW_SHOT]
    return {
        "task": task.name,
        "seed": seed,
        "kind": task.kind,
        "job_seconds": job_seconds,
        "hyperparameters": job.hyperparameters.model_dump(),
        "lora": (job.model_extra or {}).get("lora"),
        "trained_tokens": job.trained_tokens,
        "loss_curve": losses,
        "probe_p50_s": statistics.median(probe.latencies) if probe.latencies else None,
        "probe_max_s": max(probe.latencies) if probe.latencies else None,
        "accuracy": {
            "base zero-shot": run_eval(client, eval_id, MODEL, items_file, []),
            "base few-shot": run_eval(client, eval_id, MODEL, items_file, shots),
            "fine-tuned": run_eval(client, eval_id, job.fine_tuned_model or "", items_file, []),
        },
    }


def preferred_share(client: openai.OpenAI, model: str, task: PreferenceTask, prompts: list[str]) -> float:
    """The share of ``prompts`` that ``model`` answers (greedily) in the task's preferred style."""

    def answer(prompt: str) -> str:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=48, temperature=0
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(answer, prompts))
    return sum(task.follows(reply) for reply in replies) / len(replies)


def bench_preference(client: openai.OpenAI, base: str, key: str, task: PreferenceTask, seed: int) -> dict[str, Any]:
    pairs, held_out = task.examples(seed=seed)
    sft, sft_seconds, _ = fine_tune(client, base, key, PreferenceTask.sft_jsonl(pairs), f"{task.name}-sft", seed)
    dpo, dpo_seconds, probe = fine_tune(client, base, key, PreferenceTask.dpo_jsonl(pairs), task.name, seed, "dpo")
    return {
        "task": task.name,
        "style": task.style,
        "pairs": len(pairs),
        "held_out": len(held_out),
        "sft_seconds": sft_seconds,
        "dpo_seconds": dpo_seconds,
        "dpo_hyperparameters": dpo.hyperparameters.model_dump(),
        "probe_p50_s": statistics.median(probe.latencies) if probe.latencies else None,
        "preferred": {
            "base": preferred_share(client, MODEL, task, held_out),
            "SFT on preferred": preferred_share(client, sft.fine_tuned_model or "", task, held_out),
            "DPO": preferred_share(client, dpo.fine_tuned_model or "", task, held_out),
        },
    }


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, curves) = plt.subplots(1, 2, figsize=(max(11, 6 + 0.8 * len(rows)), 4))
    models = list(rows[0]["accuracy"])
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        xs = [i + index * width for i in range(len(rows))]
        bars.bar(xs, [row["accuracy"][model] * 100 for row in rows], width, label=model)
    labels = [f"{row['task']}\nseed {row['seed']}" for row in rows]
    bars.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(rows))], labels, fontsize=8)
    bars.set_ylabel("held-out accuracy (%)")
    bars.axhline(90, color="gray", linestyle=":", linewidth=1)
    bars.legend(fontsize=8)
    for row in rows:
        steps, losses = zip(*row["loss_curve"], strict=True) if row["loss_curve"] else ((), ())
        curves.plot(steps, losses, label=f"{row['task']} (seed {row['seed']})")
    curves.set_yscale("log")
    curves.set_xlabel("step")
    curves.set_ylabel("training loss")
    curves.legend(fontsize=8)
    figure.suptitle("\n".join(textwrap.wrap(f"Fine-tuning with the defaults ({title})", 150)), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def seeds_arg(text: str) -> list[int]:
    """``--seeds``: comma-separated seeds, e.g. ``0,1,2``."""
    return [int(seed) for seed in text.split(",")]


@contextmanager
def quality_gateway(results_dir: Path, log_name: str) -> Iterator[tuple[openai.OpenAI, str, str]]:
    """A fresh ``llmaas serve`` on a temporary data dir and a tenant of it: (client, base URL, key)."""
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    model_dir = prepare_default_model(EngineSettings()).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmaas-quality-") as data_dir:
        settings = {"LLMAAS_MODEL_PATH": str(model_dir), "LLMAAS_DATA_DIR": data_dir, "LLMAAS_ADMIN_KEY": ADMIN_KEY}
        with running_gateway(settings, results_dir / log_name, MODEL) as gateway:
            base = gateway.base_url
            key = create_tenant_key(base, ADMIN_KEY, "quality")
            yield openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=600), base, key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=seeds_arg, default=[0], help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--preference-tasks", default=",".join(PREFERENCE_TASKS))
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    facts = machine()
    tasks = [name for name in args.tasks.split(",") if name]
    rows: list[dict[str, Any]] = []
    preference_rows: list[dict[str, Any]] = []
    with quality_gateway(args.results_dir, "fine_tuning_quality-server.log") as (client, base, key):
        for name in tasks:
            for seed in args.seeds:
                rows.append(bench_task(client, base, key, TASKS[name], seed))
                print(f"[{name}, seed {seed}] {rows[-1]['accuracy']} in {rows[-1]['job_seconds']:.0f} s", flush=True)
        for name in filter(None, args.preference_tasks.split(",")):
            preference_rows.append(bench_preference(client, base, key, PREFERENCE_TASKS[name], args.seeds[0]))
            print(f"[{name}] {preference_rows[-1]['preferred']}", flush=True)
    result = {"machine": facts, "seeds": args.seeds, "rows": rows, "preference_rows": preference_rows}
    (args.results_dir / "fine_tuning_quality.json").write_text(json.dumps(result, indent=2))
    supervised_ok = True
    if rows:
        plot(rows, args.results_dir / "fine_tuning_quality.png", describe(facts))
        supervised_ok = print_supervised(rows, tasks, facts, args.seeds)
    if preference_rows:
        print_preference(preference_rows, facts, args.seeds[0])
    preference_ok = all(
        row["preferred"]["DPO"] >= max(0.9, row["preferred"]["SFT on preferred"]) for row in preference_rows
    )
    return 0 if supervised_ok and preference_ok else 1


def print_preference(rows: list[dict[str, Any]], facts: dict[str, Any], seed: int) -> None:
    print(f"\n## Preference fine-tuning with the defaults ({describe(facts)}; seed {seed})\n")
    print(
        "| task | preferred style | base | SFT on preferred (defaults) | **DPO (defaults)** | SFT job time | "
        "DPO job time | DPO auto: epochs, batch, lr multiplier, beta |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        share, hyper = row["preferred"], row["dpo_hyperparameters"]
        print(
            f"| {row['task']} | {row['style']} | {share['base']:.0%} | {share['SFT on preferred']:.0%} "
            f"| **{share['DPO']:.0%}** | {row['sft_seconds']:.0f} s | {row['dpo_seconds']:.0f} s | "
            f"{hyper['n_epochs']}, {hyper['batch_size']}, {hyper['learning_rate_multiplier']:g}, {hyper['beta']:g} |"
        )


def print_supervised(rows: list[dict[str, Any]], tasks: list[str], facts: dict[str, Any], seeds: list[int]) -> bool:
    """The supervised table and each task's worst seed; whether every task reached 90 % on every seed."""
    print(f"\n## Fine-tuning with the defaults ({describe(facts)}; seeds {', '.join(map(str, seeds))})\n")
    print(
        "| task | seed | kind | base zero-shot | base 5-shot | fine-tuned | job time | auto: epochs, batch, lr "
        "multiplier | chat latency while training (p50 / max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        accuracy, hyper = row["accuracy"], row["hyperparameters"]
        print(
            f"| {row['task']} | {row['seed']} | {row['kind']} | {accuracy['base zero-shot']:.0%} | "
            f"{accuracy['base few-shot']:.0%} | **{accuracy['fine-tuned']:.0%}** | {row['job_seconds']:.0f} s | "
            f"{hyper['n_epochs']}, {hyper['batch_size']}, {hyper['learning_rate_multiplier']:g} | "
            f"{(row['probe_p50_s'] or 0):.2f} / {(row['probe_max_s'] or 0):.2f} s |"
        )
    worst = {name: min(r["accuracy"]["fine-tuned"] for r in rows if r["task"] == name) for name in tasks}
    print("\nworst seed: " + ", ".join(f"{name} {accuracy:.0%}" for name, accuracy in worst.items()))
    return all(accuracy >= 0.9 for accuracy in worst.values())


if __name__ == "__main__":
    raise SystemExit(main())
