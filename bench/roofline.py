"""The roofline of this machine for the served model: how fast decoding could go at best, so that every serving
benchmark can print, beside its numbers, the limit for its case and the share of it reached.

Run it::

    .venv/bin/python bench/roofline.py                  # measure (or read the cache) and print the table
    .venv/bin/python bench/roofline.py --remeasure      # measure again

It measures, on the thread count the engine's model runs on (``engine.hardware.choose_layout``: on a small machine
the model runs in the engine-core process on every core):

* the read bandwidth: ``torch.sum`` over a tensor far larger than the last-level cache, best of several;
* GEMM throughput per dtype (fp32 and bf16 where the CPU has it natively, each through the GEMM vLLM's CPU
  backend dispatches a linear layer to; int8 through ``torch._int_mm`` and, where it is importable, our own
  kernel ``engine.kernels.int8``): a large square GEMM (the peak), and one decoding
  step's linear layers of the model itself (every layer's own weights, so that they are read from memory as in
  serving, plus the LM head) at M = 1, 4, 32 rows: what serving actually runs.

From the model's ``config.json`` it counts the bytes a decoding step reads per dtype (parameters x bytes, the LM
head included; int8: 1 byte per weight plus an fp32 scale per output channel) and the FLOPs per token (2 x
parameters + attention at a given context). ``limits(model_dir, dtype, quantization, streams)`` gives the tok/s
limit for a case: at one stream bandwidth / bytes per token; at several streams also the model-shape GEMM rate for
that many rows (tokens per step / the time of one step's linear layers and attention), the lower of the two; the
big-GEMM peak is given for reference. ``prefill_seconds`` gives, for a serving benchmark's limit with the prompts
counted, the time their prefill takes at best: its FLOPs at the float GEMM's big-GEMM peak. Measurements are cached
per machine and boot in a JSON file (``--cache-dir``, default ``bench/results/``) so that a benchmark does not
re-measure for minutes (not per CPU name: two VMs named "AMD EPYC" measured 36 and 78 GB/s); ``--remeasure``
measures again and keeps the best of each number (the machine may be shared: load only ever slows a measurement
down).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe, machine
from engine.hardware import choose_layout, detect
from engine.settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO / "bench" / "results"
Quantization = Literal["none", "int8", "w8a8"]
GemmKind = Literal["float32", "bfloat16", "int8"]
ROWS = (1, 4, 32)
"""The rows (streams decoding at once) at which the model's own linear shapes are measured."""
BANDWIDTH_BYTES = 1536 * 1024 * 1024
"""The tensor the read bandwidth is measured over: far larger than any last-level cache we run on (300 MiB)."""
PEAK_SIZE = 2048
"""The square GEMM the peak is measured with."""
DEFAULT_CONTEXT = 256
"""The context (prompt + output tokens) at which attention FLOPs are counted."""
CACHE_VERSION = 1


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs of a decoder-only model's ``config.json``."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def read(cls, model_dir: Path) -> ModelShape:
        config = json.loads((model_dir / "config.json").read_text())
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            name=model_dir.name,
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """(N output features, K input features, how many) of the linear layers one decoding step runs, as vLLM
        fuses them (qkv, gate_up), the LM head last."""
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim
        return [
            (qkv, self.hidden, self.layers),
            (self.hidden, self.heads * self.head_dim, self.layers),
            (2 * self.intermediate, self.hidden, self.layers),
            (self.hidden, self.intermediate, self.layers),
            (self.vocab, self.hidden, 1),
        ]

    def linear_params(self) -> int:
        """Weights of the linear layers, the LM head included."""
        return sum(n * k * count for n, k, count in self.linear_shapes())

    def linear_rows(self) -> int:
        """Output channels of the linear layers (one int8 scale each)."""
        return sum(n * count for n, _, count in self.linear_shapes())

    def other_params_read(self) -> int:
        """Parameters read per step besides the linear layers: the norms and one embedding row."""
        return (2 * self.layers + 1) * self.hidden + self.hidden

    def bytes_per_token(self, dtype: str, quantization: Quantization = "none") -> int:
        """The bytes one decoding step reads at least: every weight once (the KV cache left out)."""
        width = 4 if dtype == "float32" else 2
        if quantization == "none":
            linear = self.linear_params() * width
        else:  # 1 byte per weight plus an fp32 scale per output channel
            linear = self.linear_params() + 4 * self.linear_rows()
        return linear + self.other_params_read() * width

    def attention_flops(self, context: int) -> int:
        """Per token: q.k and p.v over ``context`` positions in every layer."""
        return 4 * self.heads * self.head_dim * context * self.layers

    def flops_per_token(self, context: int = DEFAULT_CONTEXT) -> int:
        return 2 * self.linear_params() + self.attention_flops(context)

    def prefill_flops(self, prompt_tokens: int, prompts: int = 1) -> float:
        """FLOPs of prefilling ``prompts`` prompts of ``prompt_tokens`` tokens in all (each of the mean length):
        every token through the layers' linear weights and causal attention over the tokens before it; the LM
        head for each prompt's last token only (an engine computes no logits for the others)."""
        lm_head = self.vocab * self.hidden
        length = prompt_tokens / prompts
        attention = prompts * self.attention_flops(1) * length * (length + 1) / 2
        return 2 * (self.linear_params() - lm_head) * prompt_tokens + 2 * lm_head * prompts + attention


def engine_threads() -> int:
    """The threads the engine's model runs on, by the engine's own layout for this machine."""
    hardware = detect()
    layout = choose_layout(hardware, None, None)
    return hardware.cores if not layout.worker_process else max(hardware.cores - layout.reserved_cores, 1)


def _best_seconds(run: Callable[[], object], repeats: int, min_seconds: float = 1.0) -> float:
    """The best time of one call of ``run`` after a warm-up, over at least ``repeats`` calls and ``min_seconds``: the
    best, not the mean, because the machine may be shared (a thread of ours descheduled only ever adds time)."""
    run()
    best, calls, started = float("inf"), 0, time.perf_counter()
    while calls < repeats or time.perf_counter() - started < min_seconds:
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
        calls += 1
    return best


def measure_bandwidth(repeats: int = 7) -> float:
    """Read bandwidth, GB/s: ``torch.sum`` of a tensor far larger than the last-level cache, best of ``repeats``."""
    import torch

    data = torch.ones(BANDWIDTH_BYTES // 4, dtype=torch.float32)
    return BANDWIDTH_BYTES / _best_seconds(data.sum, repeats) / 1e9


def int8_kernel() -> Any | None:
    """Our int8 kernel module (``engine.kernels.int8``) where it is there and usable on this machine."""
    try:
        from engine.kernels import int8  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    return int8 if int8.available() else None


def gemm_kinds() -> list[str]:
    """The GEMM paths worth measuring here: fp32; bf16 where native; int8 through torch and our kernel."""
    kinds = ["float32"]
    if detect().native_bf16 and detect().isa != "AVX2":  # torch capped at AVX2 (ATEN_CPU_CAPABILITY) runs no bf16
        kinds.append("bfloat16")
    kinds.append("int8-torch")
    kernel = int8_kernel()
    if kernel is not None:
        kinds += ["int8-ours", "w8a8-ours"]
    return kinds


def _linear(kind: str, n: int, k: int) -> tuple[Any, Callable[[Any], Any], Any]:
    """A weight of shape (n, k) for path ``kind``, the function applying it to an (m, k) input, and the input dtype."""
    import torch

    if kind in ("float32", "bfloat16"):  # the GEMM vLLM's CPU backend picks for the layer (oneDNN, sgl-kernel)
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dtype = getattr(torch, kind)
        layer = torch.nn.Module()
        layer.weight = torch.nn.Parameter(torch.randn(n, k, dtype=dtype), requires_grad=False)
        dispatch_cpu_unquantized_gemm(layer, remove_weight=False)
        gemm = cast(Callable[[Any, Any, Any], Any], layer.cpu_linear)
        return layer, lambda x: gemm(x, layer.weight, None), dtype
    if kind == "int8-torch":
        weight = torch.randint(-127, 128, (k, n), dtype=torch.int8)
        return weight, lambda x: torch._int_mm(x, weight), torch.int8
    kernel = int8_kernel()
    assert kernel is not None, kind
    packed, scales = kernel.pack_weight(torch.randn(n, k))
    dynamic = kind == "w8a8-ours"
    dtype = torch.bfloat16 if detect().native_bf16 else torch.float32  # the activations of the engine's auto dtype
    return packed, lambda x: kernel.int8_linear(x, packed, scales, dynamic_activations=dynamic), dtype


def _input(m: int, k: int, dtype: Any) -> Any:
    import torch

    if dtype == torch.int8:
        return torch.randint(-127, 128, (m, k), dtype=torch.int8)
    return torch.randn(m, k, dtype=dtype)


def measure_peak(kind: str, size: int = PEAK_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of one large square GEMM on path ``kind``."""
    _, apply, dtype = _linear(kind, size, size)
    x = _input(size, size, dtype)
    return 2 * size**3 / _best_seconds(lambda: apply(x), repeats) / 1e9


def measure_model_step(shape: ModelShape, kind: str, rows: Sequence[int], repeats: int = 10) -> dict[str, float]:
    """Seconds of one decoding step's linear layers at each number of ``rows``: every layer with its own weights
    (read from memory, as in serving), the LM head last."""
    layers = [(_linear(kind, n, k), k) for n, k, count in shape.linear_shapes() for _ in range(count)]
    dtype = layers[0][0][2]

    def step(inputs: dict[int, Any]) -> None:
        for (_, apply, _), k in layers:
            apply(inputs[k])

    seconds = {}
    for m in rows:
        inputs = {k: _input(m, k, dtype) for _, k in layers}
        seconds[str(m)] = _best_seconds(functools.partial(step, inputs), repeats, min_seconds=2.0)
    return seconds


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
"""Linux's id of this boot: a cache copied from another machine, or kept across a reboot onto other hardware, is not
read."""


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # not Linux: the machine's facts alone
        return ""


def cache_path(cache_dir: Path, shape: ModelShape, threads: int) -> Path:
    facts = machine()
    key = json.dumps([facts["cpu"], facts["cores"], facts["isa"], facts["torch"], threads, asdict(shape), boot_id()])
    return cache_dir / f"roofline-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def measure(shape: ModelShape, threads: int, kinds: Sequence[str], rows: Sequence[int]) -> dict[str, Any]:
    """Everything the roofline reads, measured now on ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measured: dict[str, Any] = {"bandwidth_gb_s": measure_bandwidth(), "peak_gflop_s": {}, "step_s": {}}
        for kind in kinds:
            measured["peak_gflop_s"][kind] = measure_peak(kind)
            measured["step_s"][kind] = measure_model_step(shape, kind, rows)
    finally:
        torch.set_num_threads(before)
    return measured


def _keep_best(cached: dict[str, Any], extra: dict[str, Any]) -> None:
    """Fold a new measurement into the cached one, keeping the best of each number: on a shared machine a
    measurement only ever comes out too slow, so the best seen is the closest to what the machine can do."""
    cached["bandwidth_gb_s"] = max(cached["bandwidth_gb_s"], extra["bandwidth_gb_s"])
    for kind, peak in extra["peak_gflop_s"].items():
        cached["peak_gflop_s"][kind] = max(cached["peak_gflop_s"].get(kind, 0.0), peak)
        steps = cached["step_s"].setdefault(kind, {})
        for rows, seconds in extra["step_s"][kind].items():
            steps[rows] = min(steps.get(rows, float("inf")), seconds)


def load(
    model_dir: Path, cache_dir: Path = DEFAULT_CACHE_DIR, rows: Sequence[int] = ROWS, remeasure: bool = False
) -> dict[str, Any]:
    """This machine's measurements for the model: from the cache, with what it lacks (a GEMM path, a number of
    rows) measured now; ``remeasure``: everything measured again and folded into the cache (the best of each
    number kept; delete the file to start over)."""
    shape = ModelShape.read(model_dir)
    threads = engine_threads()
    path = cache_path(cache_dir, shape, threads)
    kinds = gemm_kinds()
    cached: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if cached.get("version") != CACHE_VERSION:
        cached = {"version": CACHE_VERSION, "threads": threads, "machine": machine(), "model": asdict(shape)}
        cached |= {"bandwidth_gb_s": 0.0, "peak_gflop_s": {}, "step_s": {}}
        remeasure = True
    have = cached["step_s"]
    missing = sorted({m for m in rows for kind in kinds if str(m) not in have.get(kind, {})})
    if not remeasure and not missing:
        return cached
    _keep_best(cached, measure(shape, threads, kinds, rows if remeasure else missing))
    cached["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cached, indent=2) + "\n")
    return cached


def gemm_kind(dtype: str, quantization: Quantization) -> str:
    """The measured GEMM path a served case runs on."""
    if quantization == "none":
        return dtype
    kind = "w8a8-ours" if quantization == "w8a8" else "int8-ours"
    return kind if int8_kernel() is not None else "int8-torch"


@dataclass(frozen=True)
class Limit:
    """The best output tok/s a case could reach on this machine, and what bounds it."""

    tok_s: float
    bound: str
    """"bandwidth" (the weights read once per step; always at one stream) or "GEMM" (the GEMM rate at the model's
    shapes for that many rows, where lower)."""
    bandwidth_tok_s: float
    gemm_tok_s: float | None
    """Streams / (one step's linear layers at that many rows + attention at the peak rate); None if not measured."""
    peak_tok_s: float | None
    """For reference: the big square GEMM's rate / FLOPs per token."""
    weight_read_s: float
    """Seconds one step takes to read the weights at the measured bandwidth."""


def int8_max_rows(dtype: str, quantization: Quantization, served: int | None = None) -> int:
    """The largest layer call on the int8 weights: what a server says it runs (``/ready``'s ``int8_max_rows``), else
    the engine's setting for ``dtype`` and ``quantization`` as this environment and CPU set it; 0 (int8 for every
    call): no limit."""
    rows = served
    if rows is None:
        kernel = int8_kernel()
        bf16_dot = kernel is not None and bool(kernel.bf16_dot_products_lead(quantization == "w8a8"))
        rows = EngineSettings().int8_rows(dtype, bf16_dot)
    return rows or sys.maxsize


def limits(
    model_dir: Path,
    dtype: str,
    quantization: Quantization = "none",
    streams: int = 1,
    context: int = DEFAULT_CONTEXT,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    int8_rows: int | None = None,
) -> Limit:
    """The tok/s limit for ``streams`` streams of the model in ``dtype`` (and ``quantization``) on this machine.
    As the engine serves int8: a decode step of more than ``int8_rows`` (``int8_max_rows``) streams runs the float
    weights."""
    if streams > int8_max_rows(dtype, quantization, int8_rows):
        quantization = "none"
    shape = ModelShape.read(model_dir)
    measured = load(model_dir, cache_dir, rows=sorted({*ROWS, streams}))
    weight_read_s = shape.bytes_per_token(dtype, quantization) / (measured["bandwidth_gb_s"] * 1e9)
    bandwidth_tok_s = streams / weight_read_s
    kind = gemm_kind(dtype, quantization)
    peak = measured["peak_gflop_s"].get(kind)
    step = measured["step_s"].get(kind, {}).get(str(streams))
    peak_tok_s = peak * 1e9 / shape.flops_per_token(context) if peak else None
    gemm_tok_s = None
    if step is not None and peak:
        # Attention runs in the activation dtype whatever the weights are: at that dtype's GEMM peak.
        attention_peak = measured["peak_gflop_s"].get(gemm_kind(dtype, "none")) or peak
        attention_s = streams * shape.attention_flops(context) / (attention_peak * 1e9)
        gemm_tok_s = streams / (step + attention_s)
    if streams > 1 and gemm_tok_s is not None and gemm_tok_s < bandwidth_tok_s:
        return Limit(gemm_tok_s, "GEMM", bandwidth_tok_s, gemm_tok_s, peak_tok_s, weight_read_s)
    return Limit(bandwidth_tok_s, "bandwidth", bandwidth_tok_s, gemm_tok_s, peak_tok_s, weight_read_s)


def prefill_seconds(
    model_dir: Path,
    dtype: str,
    quantization: Quantization,
    prompt_tokens: int,
    prompts: int,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    int8_rows: int | None = None,
) -> float | None:
    """At best, the seconds prefilling ``prompts`` prompts of ``prompt_tokens`` tokens in all takes on this machine:
    their FLOPs at the big-GEMM peak of the path they run on (a prompt of more tokens than ``int8_rows``,
    ``int8_max_rows``, runs the float weights). A serving benchmark's limit counts it beside decoding: with short
    answers to prompts of as many tokens, prefilling is as much GEMM work as decoding, and a decode-only limit would
    call it overhead. None where that path's peak was not measured here."""
    if prompt_tokens / prompts > int8_max_rows(dtype, quantization, int8_rows):
        quantization = "none"
    peak = load(model_dir, cache_dir)["peak_gflop_s"].get(gemm_kind(dtype, quantization))
    if not peak:
        return None
    return ModelShape.read(model_dir).prefill_flops(prompt_tokens, prompts) / (float(peak) * 1e9)


CASES: tuple[tuple[str, Quantization], ...] = tuple(
    (dtype, quantization) for quantization in ("none", "int8", "w8a8") for dtype in ("float32", "bfloat16")
)


def table(model_dir: Path, cache_dir: Path, context: int) -> str:
    """The roofline as Markdown: measurements, bytes and FLOPs per token, and the limits per case and streams."""
    shape = ModelShape.read(model_dir)
    measured = load(model_dir, cache_dir)
    lines = [
        f"read bandwidth: {measured['bandwidth_gb_s']:.1f} GB/s on {measured['threads']} threads",
        "",
        "| GEMM path | peak GFLOP/s (2048^3) | "
        + " | ".join(f"model step at M={m} (ms)" for m in ROWS)
        + " | "
        + " | ".join(f"GFLOP/s at M={m}" for m in ROWS)
        + " |",
        "|---|---|" + "---|" * (2 * len(ROWS)),
    ]
    linear_flops = 2 * shape.linear_params()
    for kind, peak in measured["peak_gflop_s"].items():
        steps = [measured["step_s"][kind].get(str(m)) for m in ROWS]
        times = " | ".join("n/a" if s is None else f"{s * 1000:.2f}" for s in steps)
        rates = " | ".join(
            "n/a" if s is None else f"{linear_flops * m / s / 1e9:.1f}" for m, s in zip(ROWS, steps, strict=True)
        )
        lines.append(f"| {kind} | {peak:.1f} | {times} | {rates} |")
    lines += [
        "",
        f"model {shape.name}: {shape.linear_params() / 1e6:.1f} M linear parameters (LM head included), "
        f"{shape.flops_per_token(context) / 1e6:.0f} MFLOP per token at context {context}",
        "",
        "| dtype | weights | MB per token | " + " | ".join(f"limit tok/s at {m} streams" for m in ROWS) + " |",
        "|---|---|---|" + "---|" * len(ROWS),
    ]
    for dtype, quantization in CASES:
        # A dtype whose float GEMM was not measured here (bf16 without native support, or torch capped at AVX2 on a
        # CPU that has it) has no GEMM limit past the int8 rows: no row rather than a bandwidth-only one.
        if not {gemm_kind(dtype, quantization), gemm_kind(dtype, "none")} <= measured["peak_gflop_s"].keys():
            continue
        cells = []
        for m in ROWS:
            limit = limits(model_dir, dtype, quantization, m, context, cache_dir)
            cells.append(f"{limit.tok_s:.0f} ({limit.bound})")
        size = shape.bytes_per_token(dtype, quantization) / 1e6
        lines.append(f"| {dtype} | {quantization} | {size:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_model_dir() -> Path:
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    return prepare_default_model(EngineSettings()).resolve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="A Hugging Face model dir (default: ours).")
    parser.add_argument("--context", type=int, default=DEFAULT_CONTEXT, help="Context for attention FLOPs.")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument(
        "--remeasure", action="store_true", help="Measure again; the cache keeps the best of each number."
    )
    args = parser.parse_args(argv)
    model_dir = (args.model or default_model_dir()).resolve()
    if args.remeasure:
        load(model_dir, args.cache_dir, remeasure=True)
    print(f"machine: {describe(machine())}")
    print(table(model_dir, args.cache_dir, args.context))
    return 0


if __name__ == "__main__":
    sys.exit(main())
