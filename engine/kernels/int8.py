"""Weight-only int8 linear layers on the CPU, by our C++ kernels (``int8_cpu.cpp``): packing a weight into the
kernels' layout, unpacking it, and ``int8_linear`` (``x @ unpack_weight(packed, scales).T + bias``).

Weights are symmetric per output channel: ``scale = max|w_row| / 127``, ``q = round(w / scale)`` in [-127, 127]
(an all-zero row has scale 0). The packed tensor is int8 ``(ceil(N / 16), K, 16)``: each block holds 16 output rows,
first as ``K // 4`` groups of 64 bytes ordered ``[row][k % 4]`` (what one AVX-512 load, or VNNI's ``dpbusd``, reads),
then the ``K % 4`` remaining k values as ``[k][row]``; rows past N are zero. Activations are fp32 or bf16 (the
result has x's dtype); ``dynamic_activations=True`` (w8a8) also quantizes each row of x to int8 with its own scale
and takes int32 dot products.

The kernels pick their instruction set at run time (the library is built for the compiler's baseline):
``avx512_bf16`` (``avx512_vnni``, and bf16 activations by bf16 dot products), ``avx512_vnni``, ``avx512``,
``avx2_vnni``, ``avx2`` or ``portable``. ``isa()`` is the path in use: the best this
CPU runs, or ``LLMAAS_INT8_ISA`` where set to one it runs; ``int8_linear(..., isa=...)`` picks one per call (tests,
benchmarks). The library builds on first use (``engine.kernels.KernelLibrary``, cached per machine); importing
this module never builds nor raises, and ``available()`` says whether the kernels can run here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from engine.hardware import detect
from engine.kernels import KernelBuildError, KernelLibrary

ISA_ENV = "LLMAAS_INT8_ISA"
BLOCK_ROWS = 16
GROUP = 4
# The C++ side's path numbers (``enum Path`` in int8_cpu.cpp).
PATHS = ("portable", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "avx512_bf16")


def _register_fakes() -> None:
    """Shape-only implementation, so that ``torch.compile`` can trace through the op."""

    def fake(
        x: torch.Tensor,
        packed: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        dynamic_activations: bool,
        path: int,
    ) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], scales.shape[0]))

    # an older/newer torch without this API, or already registered: eager calls still work
    with contextlib.suppress(Exception):
        torch.library.register_fake("llmaas::int8_linear")(fake)


LIBRARY = KernelLibrary(
    "llmaas_int8_cpu", Path(__file__).with_name("int8_cpu.cpp"), native=False, register_fakes=_register_fakes
)


def available() -> bool:
    """Whether the kernels are loaded (building them first if needed); never raises."""
    return LIBRARY.available()


def supported_isas() -> list[str]:
    """The paths this CPU can run, the best first (empty where the kernels cannot be built)."""
    try:
        return [str(name) for name in LIBRARY.eager().int8_paths()]
    except KernelBuildError:
        return []


_default: str | None = None


def isa() -> str:
    """The path ``int8_linear`` uses by default: ``avx512_bf16``, ``avx512_vnni``, ``avx512``, ``avx2_vnni``,
    ``avx2``, ``portable``, or ``unavailable`` where the kernels cannot be built. Never raises."""
    return _default_path()


def _resolve_default() -> str:
    global _default
    if _default is None:
        supported = supported_isas()
        forced = os.environ.get(ISA_ENV, "").strip().lower()
        _default = forced if forced in supported else (supported[0] if supported else "unavailable")
    return _default


# Under torch.compile: resolved once at trace time, a constant in the graph.
_default_path: Callable[[], str] = torch.compiler.assume_constant_result(_resolve_default)  # type: ignore[no-untyped-call]


def bf16_dot_products_lead(dynamic_activations: bool = False) -> bool:
    """Whether bf16 activations take our kernels' bf16 dot products here (the ``avx512_bf16`` path; never with
    ``dynamic_activations``, which quantize them instead) against a float GEMM without AMX tiles: then int8 stays
    ahead of vLLM's bf16 GEMM up to ``INT8_BF16_DOT_MAX_ROWS`` rows (``engine.settings``). Never raises."""
    return not dynamic_activations and isa() == "avx512_bf16" and not detect().amx


def pack_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (N, K), fp32 or bf16 -> (packed int8 ``(ceil(N / 16), K, 16)``, scales fp32 (N,))."""
    if weight.dim() != 2:
        raise ValueError(f"pack_weight: weight must be (N, K), got shape {tuple(weight.shape)}")
    w = weight.detach().to(device="cpu", dtype=torch.float32)
    n, k = w.shape
    scales = w.abs().amax(dim=1) / 127 if k else torch.zeros(n)
    q = torch.round(w / torch.where(scales > 0, scales, 1.0)[:, None]).clamp_(-127, 127).to(torch.int8)
    blocks = -(-n // BLOCK_ROWS)
    q = torch.nn.functional.pad(q, (0, 0, 0, blocks * BLOCK_ROWS - n)).view(blocks, BLOCK_ROWS, k)
    main = k // GROUP * GROUP
    head = q[:, :, :main].reshape(blocks, BLOCK_ROWS, main // GROUP, GROUP).permute(0, 2, 1, 3)
    tail = q[:, :, main:].permute(0, 2, 1)
    packed = torch.cat([head.reshape(blocks, -1), tail.reshape(blocks, -1)], dim=1)
    return packed.view(blocks, k, BLOCK_ROWS).contiguous(), scales.contiguous()


def unpack_weight(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The dequantized (N, K) fp32 weight of ``pack_weight``'s output."""
    blocks, k, _ = packed.shape
    main = k // GROUP * GROUP
    flat = packed.reshape(blocks, k * BLOCK_ROWS)
    head = flat[:, : main * BLOCK_ROWS].view(blocks, main // GROUP, BLOCK_ROWS, GROUP).permute(0, 2, 1, 3)
    tail = flat[:, main * BLOCK_ROWS :].view(blocks, k - main, BLOCK_ROWS).permute(0, 2, 1)
    q = torch.cat([head.reshape(blocks, BLOCK_ROWS, main), tail], dim=2).reshape(blocks * BLOCK_ROWS, k)
    return q[: scales.shape[0]].to(torch.float32) * scales[:, None]


def int8_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    dynamic_activations: bool = False,
    *,
    isa: str | None = None,
) -> torch.Tensor:
    """``x @ unpack_weight(packed, scales).T + bias``: x (..., K) fp32 or bf16 -> (..., N) in x's dtype.

    ``dynamic_activations``: each row of x is first quantized to int8 (symmetric, its own scale) and the dot
    products are int32. ``isa``: one of ``supported_isas()`` instead of ``isa()``'s default."""
    name = isa if isa is not None else _default_path()
    if name not in PATHS:
        LIBRARY.eager()  # raises KernelBuildError where the kernels cannot be built
        raise ValueError(f"int8_linear: unknown path {name!r} (this CPU runs {supported_isas()})")
    path = PATHS.index(name)
    if torch.compiler.is_compiling():
        out: torch.Tensor = torch.ops.llmaas.int8_linear.default(x, packed, scales, bias, dynamic_activations, path)
        return out
    result: torch.Tensor = LIBRARY.eager().int8_linear(x, packed, scales, bias, dynamic_activations, path)
    return result
