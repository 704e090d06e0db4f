"""Micro-benchmark of our SiLU-and-multiply kernel (``engine/kernels/activation.py``) against vLLM's fused one
(``torch.ops._C.silu_and_mul``, what vLLM's SiluAndMul calls on a GPU and what we called before) and the PyTorch
chain vLLM's CPU backend runs eagerly (``F.silu(x[:, :d]) * x[:, d:]``), at the default model's MLP width
(d = 1536) and 1, 5, 32 rows (decode steps: one stream, speculation's check, 32 streams) and 1280 (a prefill of 32
prompts of 40 tokens).

Run it (on a quiet machine: the variants take turns on the same cores)::

    .venv/bin/python bench/activation_kernel.py
    .venv/bin/python bench/activation_kernel.py --rows 1,32 --repeats 3

Per dtype (fp32; bf16 where the CPU has it natively) and row count it times one call of each variant, ours on
every ISA path this CPU runs, each for ``--min-time`` seconds in each of ``--repeats`` rounds, the order rotating
between rounds, the best round counting (``bench.int8_kernels.best_times``); threads: torch's count, shared by
torch and the kernels' OpenMP. Prints the machine line and a Markdown table of microseconds per call; writes
``activation_kernel.json`` into ``--results-dir``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.int8_kernels import Call, best_times
from bench.machine import describe, machine, print_table, write_results
from engine.kernels import activation

WIDTH = 1536  # SmolLM2-135M's intermediate size: x is (rows, 2 * WIDTH)


def variants(x: torch.Tensor) -> dict[str, Call]:
    out = torch.empty(x.shape[0], WIDTH, dtype=x.dtype)
    found: dict[str, Call] = {
        "PyTorch chain": lambda: F.silu(x[:, :WIDTH]) * x[:, WIDTH:],
        "vLLM's _C.silu_and_mul": lambda: torch.ops._C.silu_and_mul(out, x),
    }
    for path in activation.supported_isas():
        found[f"ours, {path}"] = lambda path=path: activation.silu_and_mul(x, isa=path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,5,32,1280", help="comma-separated row counts")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per variant per round")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    from vllm.platforms import current_platform

    current_platform.import_kernels()  # vLLM's CPU extension: torch.ops._C
    if not activation.available():
        print(f"our kernel did not build: {activation.LIBRARY.load_error()}", file=sys.stderr)
        return 1
    facts = machine()
    dtypes = [torch.float32, torch.bfloat16] if facts["native_bf16"] else [torch.float32]
    rows = [int(value) for value in args.rows.split(",")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dtype in dtypes:
        for m in rows:
            x = torch.randn(m, 2 * WIDTH, generator=torch.Generator().manual_seed(m)).to(dtype)
            seconds = best_times(variants(x), args.repeats, args.min_time)
            results.setdefault(str(dtype).removeprefix("torch."), {})[str(m)] = {
                name: value * 1e6 for name, value in seconds.items()
            }

    print(f"\n## SiLU-and-multiply, d = {WIDTH}: microseconds per call (best of {args.repeats} rounds)")
    print(f"machine: {describe(facts)}; torch threads {torch.get_num_threads()}; ours by default {activation.isa()}\n")
    names = list(next(iter(next(iter(results.values())).values())))
    print_table(
        ["dtype", "rows", *names],
        [
            [dtype, m, *(f"{by_name[name]:.1f}" for name in names)]
            for dtype, by_rows in results.items()
            for m, by_name in by_rows.items()
        ],
    )
    path = write_results(args, "activation_kernel.json", facts, microseconds=results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
