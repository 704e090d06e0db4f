"""Does continuing a fine-tuned model on a second task keep the first? Through the public API only:

    .venv/bin/python bench/continual_learning.py [--first intent] [--second extract] [--seeds 0] [--replay 0,0.2]

Against our gateway on a fresh data dir (``bench/fine_tuning_quality.py``'s tasks, evals and jobs, all with the
default hyperparameters): fine-tune the base model on task A; then continue that ``ft:`` model (``model="ft:..."``)
on task B, once per ``--replay`` share: the share of B's example count drawn from A's training examples and mixed
into B's training file (replay, done by the client: nothing on the server changes). It scores A's held-out test set
on the task-A model and on each continued model, and B's on each continued model, and prints one table: accuracy
on A before and after, the share of A's accuracy kept, and accuracy on B (targets: B at least 90 %, A keeping at
least 80 % of its accuracy). Results go to ``continual_learning.json`` in ``--results-dir``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fine_tuning_quality import REPO, create_eval, fine_tune, quality_gateway, run_eval, seeds_arg
from bench.ft_tasks import TASKS, Example, Task
from bench.machine import describe, machine


def with_replay(second: list[Example], first: list[Example], share: float, seed: int) -> list[Example]:
    """``second``'s examples and ``share`` times as many of ``first``'s (drawn without replacement), shuffled."""
    rng = random.Random(f"replay-{seed}")
    replayed = rng.sample(first, min(len(first), round(share * len(second))))
    mixed = [*second, *replayed]
    rng.shuffle(mixed)
    return mixed


def bench_seed(
    client: openai.OpenAI, base: str, key: str, first: str, second: str, seed: int, replays: list[float]
) -> list[dict[str, Any]]:
    task_a, task_b = TASKS[first], TASKS[second]
    train_a, items_a, eval_a = create_eval(client, task_a, seed)
    train_b, items_b, eval_b = create_eval(client, task_b, seed)
    job_a, _, _ = fine_tune(client, base, key, Task.jsonl(train_a), task_a.name, seed)
    model_a = job_a.fine_tuned_model or ""
    before = run_eval(client, eval_a, model_a, items_a, [])
    rows = []
    for share in replays:
        mixed = with_replay(train_b, train_a, share, seed)
        job_ab, _, _ = fine_tune(client, base, key, Task.jsonl(mixed), task_b.name, seed, model=model_a)
        model_ab = job_ab.fine_tuned_model or ""
        after = run_eval(client, eval_a, model_ab, items_a, [])
        rows.append(
            {
                "seed": seed,
                "first": first,
                "second": second,
                "replay": share,
                "second_examples": len(mixed),
                "hyperparameters": job_ab.hyperparameters.model_dump(),
                "lineage": (job_ab.model_extra or {}).get("lineage"),
                "first_before": before,
                "first_after": after,
                "kept": after / before if before else None,
                "second_after": run_eval(client, eval_b, model_ab, items_b, []),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", default="intent", choices=sorted(TASKS))
    parser.add_argument("--second", default="extract", choices=sorted(TASKS))
    parser.add_argument("--seeds", type=seeds_arg, default=[0], help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--replay", default="0,0.2", help="comma-separated shares of A's examples mixed into B's")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    replays = [float(share) for share in args.replay.split(",")]
    if any(not 0 <= share <= 1 for share in replays):
        parser.error("--replay shares are between 0 and 1")
    facts = machine()
    rows: list[dict[str, Any]] = []
    with quality_gateway(args.results_dir, "continual_learning-server.log") as (client, base, key):
        for seed in args.seeds:
            rows += bench_seed(client, base, key, args.first, args.second, seed, replays)
    (args.results_dir / "continual_learning.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=2))
    print(f"\n## Continual learning: {args.first}, then continued on {args.second} ({describe(facts)})\n")
    print(f"| seed | replay of {args.first} | {args.first} before | {args.first} after | kept | {args.second} |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        kept = f"{row['kept']:.0%}" if row["kept"] is not None else "-"
        print(
            f"| {row['seed']} | {row['replay']:.0%} | {row['first_before']:.0%} | {row['first_after']:.0%} | {kept} "
            f"| {row['second_after']:.0%} |"
        )
    return 0 if all(row["second_after"] >= 0.9 and (row["kept"] or 0) >= 0.8 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
