"""Micro-benchmark of our int8 linear kernels (``engine/kernels/int8.py``) against torch's own matmuls, at the
default model's (SmolLM2-135M) linear shapes and at M = 1, 4, 32 rows (one stream decoding, four, 32 or a prefill).

Run it (on a quiet machine: every variant takes turns on the same cores)::

    .venv/bin/python bench/int8_kernels.py                   # every shape, M = 1, 4, 32
    .venv/bin/python bench/int8_kernels.py --rows 1 --repeats 5

Per shape and M it times one call of: torch fp32 ``F.linear`` with the dequantized weight; torch bf16 ``F.linear``
(where the CPU has native bf16); our weight-only int8 on each ISA path this CPU runs; our w8a8 (activations
quantized per row) on each path. Each variant is timed for ``--min-time`` seconds in each of ``--repeats`` rounds,
the order rotating between rounds; the best round counts (the machine's noise only ever slows a round down).
Weights of one shape are reused call after call, so small layers run from the caches: the "decode step" section
then runs every layer of the model once (30 layers of q/k/v/o/gate/up/down, each with its own weights, plus the LM
head) as a decoding step does, with weights from memory, beside a plain read of a large tensor (``torch.sum``).
It reports the weight read rate (GB/s) at M = 1, GFLOP/s at M = 32, each variant's time relative to fp32, and
per shape the error of int8 and w8a8 against the fp32 weight (random normal x and weights: real activations,
with outliers, are harder on w8a8; bench/quantization_quality.py measures the model's quality).
Threads: torch's thread count (what the engine gives its model; ``--threads``), shared by torch and our kernels'
OpenMP. On a loaded machine ``--threads 1 --clock cpu`` compares the kernels' own cost (CPU time per call)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe, machine
from engine.kernels import int8

HIDDEN, INTERMEDIATE, KV, VOCAB, LAYERS = 576, 1536, 192, 49152, 30
# name -> (N, K) of the default model's linear layers
SHAPES = {
    "q/o": (HIDDEN, HIDDEN),
    "k/v": (KV, HIDDEN),
    "gate/up": (INTERMEDIATE, HIDDEN),
    "down": (HIDDEN, INTERMEDIATE),
    "lm_head": (VOCAB, HIDDEN),
}
LAYER_SHAPES = ("q/o", "k/v", "k/v", "q/o", "gate/up", "gate/up", "down")  # q, k, v, o, gate, up, down
READ_BYTES = 1 << 29  # the plain read: far larger than the last-level cache
Call = Callable[[], object]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def time_call(fn: Call, min_time: float) -> float:
    """Seconds per call, over at least ``min_time`` seconds (and at least 2 calls) after one warm-up call."""
    fn()
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= min_time and calls >= 2:
            return elapsed / calls


def best_times(variants: dict[str, Call], repeats: int, min_time: float) -> dict[str, float]:
    """The best seconds per call of each variant over ``repeats`` rounds, the order rotating between rounds."""
    names = list(variants)
    best = dict.fromkeys(names, float("inf"))
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            best[name] = min(best[name], time_call(variants[name], min_time))
    return best


def native_bf16() -> bool:
    return bool(machine()["native_bf16"])


def variants_for(weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], x: torch.Tensor) -> dict[str, Call]:
    """Calls that run ``x`` through every (fp32 weight, packed, scales) of ``weights`` once, per variant."""
    fp32 = [int8.unpack_weight(p, s) for _, p, s in weights]
    variants: dict[str, Call] = {"torch fp32": lambda: [F.linear(x, w) for w in fp32]}
    if native_bf16():
        bf16, xb = [w.to(torch.bfloat16) for w in fp32], x.to(torch.bfloat16)
        variants["torch bf16"] = lambda: [F.linear(xb, w) for w in bf16]
    for path in int8.supported_isas():
        variants[f"int8 {path}"] = lambda path=path: [int8.int8_linear(x, p, s, isa=path) for _, p, s in weights]
    for path in int8.supported_isas():
        variants[f"w8a8 {path}"] = lambda path=path: [
            int8.int8_linear(x, p, s, dynamic_activations=True, isa=path) for _, p, s in weights
        ]
    return variants


def step_variants(
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rows: int, generator: torch.Generator
) -> dict[str, Call]:
    """Each variant over every layer once: layers of either K (hidden, intermediate) take an x of their own."""
    parts = []
    for k in (HIDDEN, INTERMEDIATE):
        x = torch.randn(rows, k, generator=generator)
        parts.append(variants_for([w for w in layers if w[0].shape[1] == k], x))
    return {name: lambda name=name: [part[name]() for part in parts] for name in parts[0]}


def weight_bytes(variant: str, params: int, rows: int) -> float:
    if variant.startswith("torch fp32"):
        return 4.0 * params
    if variant.startswith("torch bf16"):
        return 2.0 * params
    return params + 4.0 * rows  # int8 weights + fp32 scales


def report(title: str, n_k: list[tuple[int, int]], rows: int, times: dict[str, float]) -> None:
    params = sum(n * k for n, k in n_k)
    out_rows = sum(n for n, _ in n_k)
    flops = 2.0 * rows * params
    base = times["torch fp32"]
    print(f"\n{title}, M={rows}: {params / 1e6:.2f} M weights")
    print(f"  {'variant':<20} {'us/call':>10} {'GB/s':>8} {'GFLOP/s':>9} {'vs fp32':>8}")
    for name, seconds in times.items():
        gbs = weight_bytes(name, params, out_rows) / seconds / 1e9
        print(f"  {name:<20} {seconds * 1e6:10.1f} {gbs:8.1f} {flops / seconds / 1e9:9.1f} {seconds / base:7.2f}x")


def errors(weight: torch.Tensor, x: torch.Tensor) -> str:
    """How far int8 and w8a8 (the default path) land from ``x @ weight.T`` in fp64."""
    packed, scales = int8.pack_weight(weight)
    ref = x.double() @ weight.double().T
    parts = []
    for label, dynamic in (("int8", False), ("w8a8", True)):
        y = int8.int8_linear(x, packed, scales, dynamic_activations=dynamic)
        parts.append(f"{label} {float((y.double() - ref).norm() / ref.norm()):.2e}")
    return ", ".join(parts)


def plain_read_gbs(repeats: int) -> float:
    data = torch.ones(READ_BYTES // 4)
    best = min(time_call(lambda: data.sum(), 0.2) for _ in range(repeats))
    return READ_BYTES / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,4,32", help="comma-separated M values")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per variant per round")
    parser.add_argument("--no-step", action="store_true", help="skip the whole decode step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch (and our) threads")
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="cpu: the process's CPU time (with --threads 1, a kernel's own cost on a loaded machine)",
    )
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    if not int8.available():
        sys.exit(f"the int8 kernels did not build: {int8.LIBRARY.load_error()}")
    print(f"machine: {describe(machine())}")
    paths = f"int8 paths {int8.supported_isas()} (default {int8.isa()})"
    print(f"clock {args.clock}; torch threads {torch.get_num_threads()}; {paths}")
    print(f"plain read (torch.sum over {READ_BYTES >> 20} MiB fp32): {plain_read_gbs(args.repeats):.1f} GB/s")
    rows_list = [int(r) for r in args.rows.split(",")]
    generator = torch.Generator().manual_seed(0)
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        weight = torch.randn(n, k, generator=generator) / k**0.5
        packed = [(weight, *int8.pack_weight(weight))]
        for rows in rows_list:
            x = torch.randn(rows, k, generator=generator)
            times = best_times(variants_for(packed, x), args.repeats, args.min_time)
            report(f"{name} ({n}x{k})", [(n, k)], rows, times)
            print(f"  error vs the fp32 weight (relative Frobenius norm): {errors(weight, x)}")
    if args.no_step:
        return
    step = [SHAPES[name] for _ in range(LAYERS) for name in LAYER_SHAPES] + [SHAPES["lm_head"]]
    layers = []
    for n, k in step:
        weight = torch.randn(n, k, generator=generator) / k**0.5
        layers.append((weight, *int8.pack_weight(weight)))
    for rows in rows_list:
        times = best_times(step_variants(layers, rows, generator), args.repeats, args.min_time)
        report("decode step (every linear layer of the model once, weights from memory)", step, rows, times)


if __name__ == "__main__":
    main()
