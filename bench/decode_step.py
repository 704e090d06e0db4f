"""A decode step taken apart, and vLLM's native RMSNorm / SiluAndMul against our fused ones in it.

    .venv/bin/python bench/decode_step.py [--streams 1] [--dtype float32|bfloat16] [--quantization int8|w8a8|none]
                                          [--rounds 10] [--tokens 64] [--results-dir bench/results]

Builds one engine in this process, as the gateway builds it (``engine.vllm_setup.engine_args``: the default model,
vLLM's single-process executor, eager, LoRA enabled, no speculation so that every step is one token per sequence),
and runs ``--streams`` requests at a time: each a distinct 40-token prompt, then ``--tokens`` greedy tokens
(``ignore_eos``). A round times the decode steps of its requests (from when every one has its first token) and,
apart, the prefill (from the requests' arrival until every one has its first token). Rounds alternate between three
modes in the same engine (each layer's flags flipped between rounds), so the machine's drift lands on all alike:
the fused layers (``engine/kernels/cpu_ops.py``: vLLM's fused norms, our SiLU-and-multiply kernel), the same with
vLLM's own fused SiLU-and-multiply kernel, and vLLM's native chains; and checks that all give the same tokens. Then one
more round per mode with timers on vLLM's methods splits a step into: the linear layers (their quantization
method's ``apply``, the LM head included), attention (KV-cache write and paged attention, ``Attention.forward``),
the rest of the model (norms, activations, rotary embedding, residual adds, and the Python of 30 layers), and the
engine around the model (scheduling, input preparation, sampling, output processing). The timers cost a little
themselves: the split is for proportions; the A/B rows are without them.

Prints the machine line and two Markdown tables; writes ``decode_step.json`` into ``--results-dir``."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe, machine, print_table, write_results

PROMPT_LENGTH = 40
SPLIT = ("linear layers", "attention", "rest of the model", "engine around the model")


@contextmanager
def timed(owner: type, method: str, totals: dict[str, float], label: str, inside: set[str]) -> Iterator[None]:
    """``owner.method`` adds its wall time to ``totals[label]`` while the block runs, unless called inside another
    method timed under the same label (the int8 method hands big calls to vLLM's float one: counted once)."""
    original = owner.__dict__[method]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if label in inside:
            return original(*args, **kwargs)
        inside.add(label)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start
            inside.discard(label)

    setattr(owner, method, wrapper)
    try:
        yield
    finally:
        setattr(owner, method, original)


class Streams:
    """The engine, and ``streams`` requests at a time through it."""

    def __init__(self, dtype: str, quantization: str, tokens: int, streams: int) -> None:
        from vllm import SamplingParams
        from vllm.v1.engine.llm_engine import LLMEngine

        from engine.model_prep import served_model_plans
        from engine.settings import EngineSettings
        from engine.vllm_setup import engine_args

        settings = EngineSettings(dtype=dtype, quantization=quantization, speculation="off", cpu_worker_process=False)
        args, self.info = engine_args(settings, served_model_plans(settings)[0], 0.9)
        self.engine = LLMEngine.from_engine_args(args)
        self.params = SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
        self.tokens, self.streams = tokens, streams
        self._requests = 0

    @property
    def model(self) -> Any:
        core = self.engine.engine_core.engine_core  # type: ignore[attr-defined]  # the in-process client
        return core.model_executor.driver_worker.worker.model_runner.model

    def run(self, on_decode_start: Callable[[], None] = lambda: None) -> tuple[float, float, list[int]]:
        """Seconds per decode step of the round's requests, seconds of their prefill, and their tokens (one list, in
        request order)."""
        tokens: dict[str, list[int]] = {}
        arrival = time.perf_counter()
        for stream in range(self.streams):
            self._requests += 1
            prompt = [1000 + 97 * stream + i for i in range(PROMPT_LENGTH)]
            self.engine.add_request(f"r{self._requests}", {"prompt_token_ids": prompt}, self.params)
            tokens[f"r{self._requests}"] = []

        def step() -> None:
            for output in self.engine.step():
                tokens[output.request_id] = list(output.outputs[0].token_ids)

        while not all(tokens.values()):  # the prefill, until every request has its first token
            step()
        prefill_s = time.perf_counter() - arrival
        on_decode_start()
        steps = 0
        start = time.perf_counter()
        while self.engine.has_unfinished_requests():
            step()
            steps += 1
        step_s = (time.perf_counter() - start) / steps
        return step_s, prefill_s, [token for answer in tokens.values() for token in answer]


def split_step(stream: Streams) -> dict[str, float]:
    """ms per decode step in each part of ``SPLIT``, from one timed round."""
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from engine.kernels.int8_method import Int8LinearMethod

    totals = dict.fromkeys(("linear", "attention", "forward", "logits"), 0.0)
    inside: set[str] = set()
    model_class = type(stream.model)
    hooks = [
        (Int8LinearMethod, "apply", "linear"),
        (UnquantizedLinearMethod, "apply", "linear"),
        (UnquantizedEmbeddingMethod, "apply", "linear"),
        (Attention, "forward", "attention"),
        (GPUModelRunner, "_model_forward", "forward"),
        (model_class, "compute_logits", "logits"),
    ]

    def reset() -> None:
        for key in totals:
            totals[key] = 0.0

    with ExitStack() as stack:
        for owner, method, label in hooks:
            stack.enter_context(timed(owner, method, totals, label, inside))
        step_s, _, _ = stream.run(on_decode_start=reset)
    steps = stream.tokens - 1  # every request got its first token before the timers started
    per_step = {key: value / steps * 1000 for key, value in totals.items()}
    model_ms = per_step["forward"] + per_step["logits"]
    return {
        "step": step_s * 1000,
        "linear layers": per_step["linear"],
        "attention": per_step["attention"],
        "rest of the model": model_ms - per_step["linear"] - per_step["attention"],
        "engine around the model": step_s * 1000 - model_ms,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1, help="requests decoded together")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantization", default="int8", choices=["int8", "w8a8", "none"])
    parser.add_argument("--rounds", type=int, default=10, help="rounds per mode, alternating")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    facts = machine()
    stream = Streams(args.dtype, args.quantization, args.tokens, args.streams)
    from engine.kernels.cpu_ops import FusedRMSNorm, FusedSiluAndMul

    layers = [m for m in stream.model.modules() if isinstance(m, (FusedRMSNorm, FusedSiluAndMul))]
    if not layers:
        print("the model has no fused layers (not the CPU platform?)", file=sys.stderr)
        return 1
    ours_silu = {layer: layer.ours for layer in layers if isinstance(layer, FusedSiluAndMul)}
    modes = {
        "fused (ours)": (True, True),
        "fused, vLLM's SiLU kernel": (True, False),
        "native (vLLM's)": (False, False),
    }

    def use(fused: bool, ours: bool) -> None:
        for layer in layers:
            layer.fused = fused
        for silu, built in ours_silu.items():
            silu.ours = ours and built

    stream.run()  # warm-up
    steps: dict[str, list[float]] = {mode: [] for mode in modes}
    prefills: dict[str, list[float]] = {mode: [] for mode in modes}
    outputs: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for mode, flags in modes.items():
            use(*flags)
            step_s, prefill_s, tokens = stream.run()
            steps[mode].append(step_s * 1000)
            prefills[mode].append(prefill_s * 1000)
            outputs.setdefault(mode, tokens)
    same_tokens = len({tuple(tokens) for tokens in outputs.values()}) == 1
    splits = {}
    for mode, flags in modes.items():
        use(*flags)
        splits[mode] = split_step(stream)

    print(
        f"\n## A decode step of {args.streams} stream(s): {args.quantization} weights, {args.dtype}, "
        f"{args.tokens} tokens each"
    )
    print(f"machine: {describe(facts)}; engine {stream.info}")
    print(f"greedy tokens equal in every mode: {same_tokens}\n")
    base = statistics.median(steps["native (vLLM's)"])
    print_table(
        [
            "RMSNorm / SiluAndMul",
            "ms per decode step (median)",
            "min - max",
            "vs native",
            f"prefill of {args.streams} x {PROMPT_LENGTH} tokens, ms (median)",
            "rounds",
        ],
        [
            [
                mode,
                f"{statistics.median(values):.2f}",
                f"{min(values):.2f} - {max(values):.2f}",
                f"{statistics.median(values) / base - 1:+.1%}",
                f"{statistics.median(prefills[mode]):.1f}",
                str(len(values)),
            ]
            for mode, values in steps.items()
        ],
    )
    print("\nOne timed round per mode (ms per decode step; timers add a little):\n")
    print_table(
        ["mode", "step", *SPLIT],
        [[mode, *(f"{split[key]:.2f}" for key in ("step", *SPLIT))] for mode, split in splits.items()],
    )
    path = write_results(
        args, "decode_step.json", facts, steps_ms=steps, prefill_ms=prefills, split_ms=splits, same_tokens=same_tokens
    )
    print(f"\nwrote {path}")
    return 0 if same_tokens else 1


if __name__ == "__main__":
    raise SystemExit(main())
