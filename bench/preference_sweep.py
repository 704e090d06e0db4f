"""Where DPO's auto hyperparameters come from: DPO runs in process (``adapters.preference.train_dpo``, no gateway)
on the preference tasks of ``bench/ft_tasks.py``, each scored by the share of held-out prompts the trained model
answers (greedily) in the preferred style:

    .venv/bin/python bench/preference_sweep.py --tasks one_word,bullets --grid 2:5:0.1,2:10:0.1 [--pairs 200]

Each grid point is ``epochs:lr multiplier:beta[:nll weight]`` at batch 8 (the NLL weight: ``train_dpo``'s
``nll_weight``, 0 when left out). It prints one markdown row per task and grid point
(the table in ``adapters/hyperparameters.py`` came from it) and the base model's share for reference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adapters.datasets import parse_jsonl
from adapters.hyperparameters import BASE_LEARNING_RATE
from adapters.preference import train_dpo
from adapters.training import TrainingSpec
from bench.ft_tasks import PREFERENCE_TASKS, PreferenceTask
from bench.machine import describe, machine

MAX_NEW_TOKENS = 40


def answers(model_dir: Path, adapter_dir: Path | None, prompts: list[str]) -> list[str]:
    """Greedy answers of the base model (with the adapter, if any) to each prompt as a user message."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    replies = []
    with torch.no_grad():
        for prompt in prompts:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            output = model.generate(
                ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
            replies.append(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
    return replies


def share(task: PreferenceTask, replies: list[str]) -> float:
    return sum(task.follows(reply) for reply in replies) / len(replies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(PREFERENCE_TASKS))
    parser.add_argument("--grid", default="2:5:0.1")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", action="store_true", help="also score the base model")
    parser.add_argument("--model-dir", type=Path, help="the base model (default: the served default model)")
    args = parser.parse_args()
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    model_dir = (args.model_dir or prepare_default_model(EngineSettings())).resolve()
    print(describe(machine()))
    print("| task | epochs | lr multiplier | beta | nll weight | preferred style (held out) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        task = PREFERENCE_TASKS[name]
        pairs, held_out = task.examples(seed=args.seed, n_train=args.pairs)
        if args.base:
            print(f"| {name} | base | | | | {share(task, answers(model_dir, None, held_out)):.0%} | |", flush=True)
        for point in args.grid.split(","):
            epochs, multiplier, beta, nll_weight = [*point.split(":"), "0"][:4]
            with tempfile.TemporaryDirectory(prefix="llmaas-sweep-") as out:
                spec = TrainingSpec(
                    base_model_dir=model_dir,
                    train=parse_jsonl(PreferenceTask.dpo_jsonl(pairs)),
                    validation=None,
                    output_dir=Path(out),
                    n_epochs=int(epochs),
                    batch_size=8,
                    learning_rate=BASE_LEARNING_RATE * float(multiplier),
                    seed=args.seed,
                )
                started = time.perf_counter()
                result = train_dpo(spec, float(beta), nll_weight=float(nll_weight))
                seconds = time.perf_counter() - started
                score = share(task, answers(model_dir, result.adapter_dir, held_out))
            print(
                f"| {name} | {epochs} | {multiplier} | {beta} | {nll_weight} | {score:.0%} | {seconds:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
