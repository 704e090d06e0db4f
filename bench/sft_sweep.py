"""Where supervised fine-tuning's auto hyperparameters come from: LoRA training runs in process
(``adapters.training.train_lora``, no gateway) on the tasks of ``bench/ft_tasks.py``, each scored after every epoch
by the exact match of the answers the trained model generates greedily for the task's held-out test examples:

    .venv/bin/python bench/sft_sweep.py --tasks intent,extract,contact --seeds 0,1,2 --grid 4:15,3:10 \
        [--noise 0,0.15] [--fp32]

Each grid point is ``epochs:lr multiplier[:lora layers[:rank[:dropout]]]`` at the auto batch (8 for 150
examples); the LoRA shape defaults to the job's (``adapters.trainable.LoraSpec``; layers 0: the top third).
``--noise`` runs every grid point at each of the hidden-state noise levels given (default: the job's,
``adapters.hyperparameters.HIDDEN_NOISE``). The held-out set rides along as the run's validation set, which is how
each epoch's exact match is measured; the last epoch's adapter is what a job without a validation file keeps.
Training computes in bf16 where the CPU has native bf16 (as the worker does), in fp32 with ``--fp32`` or elsewhere.
It prints one markdown row per task, seed and grid point: the exact match after each epoch, and the seconds the run
took (training and the per-epoch scoring together).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adapters.datasets import parse_jsonl
from adapters.hyperparameters import BASE_LEARNING_RATE, HIDDEN_NOISE, choose
from adapters.trainable import LoraSpec
from adapters.training import Checkpoint, TrainingSpec, train_lora
from bench.fine_tuning_quality import seeds_arg
from bench.ft_tasks import TASKS, Task
from bench.machine import describe, machine


def held_out_scores(checkpoints: tuple[Checkpoint, ...]) -> str:
    """Each epoch's held-out exact match, e.g. ``72 / 88 / 93 %``."""
    scores = [c.validation.data()["valid_exact_match"] if c.validation else 0.0 for c in checkpoints]
    return " / ".join(f"{100 * score:.0f}" for score in scores) + " %"


def lora_shape(fields: list[str]) -> LoraSpec:
    """The adapter's shape from a grid point's optional ``layers:rank:dropout`` (alpha stays twice the rank)."""
    default = LoraSpec()
    layers, rank, dropout = [*fields, *("0", str(default.rank), str(default.dropout))[len(fields) :]]
    return replace(default, layers=int(layers) or None, rank=int(rank), alpha=2 * int(rank), dropout=float(dropout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2], help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--grid", default="4:8", help="epochs:multiplier[:layers[:rank[:dropout]]], comma-separated")
    parser.add_argument(
        "--noise", default=str(HIDDEN_NOISE), help="hidden-state noise levels, comma-separated, e.g. 0,0.15"
    )
    parser.add_argument("--fp32", action="store_true", help="train in fp32 even where the CPU has native bf16")
    parser.add_argument("--model-dir", type=Path, help="the base model (default: the served default model)")
    args = parser.parse_args()
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    facts = machine()
    bf16 = facts["native_bf16"] and not args.fp32
    model_dir = (args.model_dir or prepare_default_model(EngineSettings())).resolve()
    print(f"{describe(facts)}; training in {'bf16' if bf16 else 'fp32'}")
    columns = [
        "task",
        "seed",
        "epochs",
        "multiplier",
        "layers",
        "rank",
        "dropout",
        "noise",
        "held-out exact match",
        "seconds",
    ]
    print(f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    for point, noise in itertools.product(args.grid.split(","), [float(level) for level in args.noise.split(",")]):
        epochs, multiplier, *shape = point.split(":")
        lora = lora_shape(shape)
        for name in args.tasks.split(","):
            for seed in args.seeds:
                train, test = TASKS[name].examples(seed=seed)
                with tempfile.TemporaryDirectory(prefix="llmaas-sweep-") as out:
                    spec = TrainingSpec(
                        base_model_dir=model_dir,
                        train=parse_jsonl(Task.jsonl(train)),
                        validation=parse_jsonl(Task.jsonl(test)),
                        output_dir=Path(out),
                        n_epochs=int(epochs),
                        batch_size=choose(len(train), {}).batch_size,
                        learning_rate=BASE_LEARNING_RATE * float(multiplier),
                        seed=seed,
                        lora=lora,
                        keep="last",
                        bf16=bf16,
                        noise=noise,
                    )
                    started = time.perf_counter()
                    result = train_lora(spec)
                    seconds = time.perf_counter() - started
                print(
                    f"| {name} | {seed} | {epochs} | {multiplier} | {lora.layers or 'auto'} | {lora.rank} "
                    f"| {lora.dropout} | {noise} | {held_out_scores(result.checkpoints)} | {seconds:.0f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
