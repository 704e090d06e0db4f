"""SiLU-and-multiply on the CPU by our C++ kernel (``activation_cpu.cpp``): ``silu(x[..., :d]) * x[..., d:]``.

The gated activation of SwiGLU MLPs, which ``engine.kernels.cpu_ops`` hands here in eager mode: vLLM's own fused
kernel for it takes about 2 µs a row whatever the ISA (a 32-stream decode step of SmolLM2-135M spent 3-4 ms in it,
a 1280-token prefill 2.7 ms a layer), this one a vector exponential and one rounding.

The kernel picks its instruction set at run time (the library is built for the compiler's baseline): ``avx512``,
``avx2`` or ``portable``. ``isa()`` is the best this CPU runs within PyTorch's own capability
(``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` lowers: a machine made to stand in for an
AVX2 one runs the AVX2 path here too); ``silu_and_mul(x, isa=...)`` picks one per call (tests, benchmarks). The
library builds on first use (``engine.kernels.KernelLibrary``, cached per machine); importing this module never
builds nor raises, and ``available()`` says whether the kernel can run here."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from engine.kernels import KernelBuildError, KernelLibrary

# The C++ side's path numbers (``enum Path`` in activation_cpu.cpp), and the best path each PyTorch capability allows.
PATHS = ("portable", "avx2", "avx512")
_BEST_PATH = {"DEFAULT": "portable", "AVX2": "avx2", "AVX512": "avx512"}

# Eager only (under torch.compile vLLM runs its own PyTorch form of the layer): no torch.library op to trace.
LIBRARY = KernelLibrary(
    "llmaas_activation_cpu", Path(__file__).with_name("activation_cpu.cpp"), native=False, register_fakes=lambda: None
)


def available() -> bool:
    """Whether the kernel is loaded (building it first if needed); never raises."""
    return LIBRARY.available()


def supported_isas() -> list[str]:
    """The paths this CPU can run, the best first (empty where the kernel cannot be built)."""
    try:
        return [str(name) for name in LIBRARY.eager().activation_paths()]
    except KernelBuildError:
        return []


def isa() -> str:
    """The path ``silu_and_mul`` uses by default: the best this CPU runs that PyTorch's capability allows, or
    ``unavailable`` where the kernel cannot be built. Never raises."""
    return _default_path()


@functools.cache
def _default_path() -> str:
    best = _BEST_PATH.get(torch.backends.cpu.get_cpu_capability(), PATHS[-1])  # another platform's: no cap
    allowed = [name for name in supported_isas() if PATHS.index(name) <= PATHS.index(best)]
    return allowed[0] if allowed else "unavailable"


def silu_and_mul(x: torch.Tensor, *, isa: str | None = None) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for x (..., 2d) fp32 or bf16 -> (..., d) in x's dtype (computed in fp32,
    rounded once). ``isa``: one of ``supported_isas()`` instead of ``isa()``'s default."""
    name = isa if isa is not None else _default_path()
    if name not in PATHS:
        LIBRARY.eager()  # raises KernelBuildError where the kernel cannot be built
        raise ValueError(f"silu_and_mul: unknown path {name!r} (this CPU runs {supported_isas()})")
    out: torch.Tensor = LIBRARY.eager().silu_and_mul(x, PATHS.index(name))
    return out
