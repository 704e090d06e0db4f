"""Our C++ kernels for vLLM's CPU backend: the shared JIT build of a kernel library into a per-machine cache dir
and its loading once per process (``KernelLibrary``), and the multi-LoRA kernels (``lora_cpu.cpp``) with thin
typed wrappers over their ``torch.ops.llmaas`` ops. The int8 linear kernels are ``engine.kernels.int8``.

The build is a JIT compile with ``torch.utils.cpp_extension.load`` (system g++, ninja from the venv) the first
time an engine process needs a library; later processes (and later starts) load the cached ``.so`` in
milliseconds. JIT rather than a ``pip`` build step so that no isolated build env can pull a CUDA torch, and
because ``-march=native`` (the LoRA kernels) ties the binary to the CPU it was built on: the cache dir is keyed by
the CPU's model and flags, the compiler and the torch version. ``LLMAAS_KERNEL_CACHE_DIR`` overrides the cache root
(default ``$XDG_CACHE_HOME/llmaas/kernels`` or ``~/.cache/llmaas/kernels``).

A build is a Python module: eager callers (vLLM's engine runs eagerly by default) call its functions directly,
which costs a fraction of a call through the dispatcher; under ``torch.compile`` the wrappers call the same
kernels as ``torch.ops.llmaas`` ops, which the module registers when it loads.

This module imports torch, never vLLM (the vLLM wiring is ``engine.kernels.vllm_plugin``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch

CACHE_ENV = "LLMAAS_KERNEL_CACHE_DIR"
MARCH_ENV = "LLMAAS_KERNEL_MARCH"
"""The ``-march`` to build the LoRA kernels for (default ``native``; ``haswell`` builds the AVX2 path on any
x86-64 CPU). Libraries that pick their ISA at run time (``native=False``) are built for the compiler's baseline."""

LDFLAGS = ("-fopenmp",)
# A build lock older than this was left by a process killed mid-build (torch's lock never expires, and torch waits
# on it forever); a build takes a minute or two.
STALE_LOCK_S = 300.0
LOCK_POLL_S = 1.0


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled or loaded on this machine."""


def machine_key() -> str:
    """What a ``-march=native`` binary depends on: CPU model and flags, compiler, torch version, Python ABI."""
    cpu = ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "vendor_id"))}))
    except OSError:
        cpu = platform.processor()
    compiler = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = "unknown"
    march = os.environ.get(MARCH_ENV, "native")
    material = "\n".join([platform.machine(), cpu, compiler, version, torch.__version__, sys.version, march])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _ensure_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; a venv's ninja is not on it unless the venv is activated."""
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for directory in candidates:
        if (directory / "ninja").exists():
            os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def _await_build_lock(build_dir: Path) -> None:
    """Returns once no other process holds the build lock: at once where there is none, when its builder finishes,
    or when the lock is ``STALE_LOCK_S`` old (its builder was killed mid-build), which it then removes."""
    lock = build_dir / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except OSError:
            return
        if age > STALE_LOCK_S:
            with contextlib.suppress(OSError):
                lock.unlink()
            return
        time.sleep(LOCK_POLL_S)


class KernelLibrary:
    """One C++ source built (once per machine) into a Python module that also registers ``torch.ops.llmaas`` ops,
    loaded once per process. ``native``: built with ``-march`` (``LLMAAS_KERNEL_MARCH``, default ``native``);
    otherwise for the compiler's baseline, the source choosing its ISA at run time. ``register_fakes`` gives
    the ops shape-only implementations for ``torch.compile`` once the library is loaded."""

    def __init__(self, name: str, source: Path, *, native: bool, register_fakes: Callable[[], None]) -> None:
        self.name = name
        self.source = source
        self.native = native
        self.register_fakes = register_fakes
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._error: str | None = None

    def cflags(self) -> tuple[str, ...]:
        march = (f"-march={os.environ.get(MARCH_ENV, 'native')}",) if self.native else ()
        return ("-O3", *march, "-fopenmp", "-Wno-unused-function")

    def cache_dir(self) -> Path:
        """Where this machine's build lives."""
        root = os.environ.get(CACHE_ENV)
        if root:
            base = Path(root)
        else:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmaas" / "kernels"
        return base / f"{self.name}-{machine_key()}"

    def load(self) -> ModuleType:
        """Builds (first time on this machine) and loads the library into this process; raises KernelBuildError."""
        with self._lock:
            if self._module is not None:
                return self._module
            if self._error is not None:
                raise KernelBuildError(self._error)
            try:
                from torch.utils.cpp_extension import load as jit_load

                build_dir = self.cache_dir()
                build_dir.mkdir(parents=True, exist_ok=True)
                _ensure_ninja_on_path()
                _await_build_lock(build_dir)
                module: ModuleType = jit_load(
                    name=self.name,
                    sources=[str(self.source)],
                    extra_cflags=list(self.cflags()),
                    extra_ldflags=list(LDFLAGS),
                    build_directory=str(build_dir),
                    is_python_module=True,
                    verbose=False,
                )
                self.register_fakes()
            except Exception as exc:
                self._error = f"{type(exc).__name__}: {exc}".strip()
                raise KernelBuildError(self._error) from exc
            self._module = module
            return module

    def eager(self) -> ModuleType:
        """The loaded module (loading it first if needed): what eager callers call."""
        return self._module if self._module is not None else self.load()

    def available(self) -> bool:
        """Whether the library is loaded (building it first if needed); never raises."""
        try:
            self.load()
        except KernelBuildError:
            return False
        return True

    def load_error(self) -> str | None:
        """Why the last ``load()`` failed, if it did."""
        return self._error


def _register_lora_fakes() -> None:
    """Shape-only implementations, so that ``torch.compile`` can trace through the ops (they return nothing)."""
    for op in ("lora_shrink", "lora_expand", "lora_linear"):
        # an older/newer torch without this API, or already registered: eager calls still work
        with contextlib.suppress(Exception):
            torch.library.register_fake(f"llmaas::{op}")(lambda *args, **kwargs: None)


LORA = KernelLibrary(
    "llmaas_lora_cpu", Path(__file__).with_name("lora_cpu.cpp"), native=True, register_fakes=_register_lora_fakes
)


def cache_dir() -> Path:
    """Where this machine's LoRA build lives."""
    return LORA.cache_dir()


def load() -> ModuleType:
    """Builds (first time on this machine) and loads the LoRA kernels into this process; raises KernelBuildError."""
    return LORA.load()


def _eager() -> ModuleType:
    return LORA.eager()


def available() -> bool:
    """Whether the LoRA kernels are loaded (building them first if needed); never raises."""
    return LORA.available()


def load_error() -> str | None:
    """Why the last LoRA ``load()`` failed, if it did."""
    return LORA.load_error()


def isa() -> str:
    """The instruction set the loaded build was compiled for: ``avx512+bf16``, ``avx512``, ``avx2`` or ``scalar``."""
    return str(torch.ops.llmaas.isa())


def cache_stats() -> dict[str, int]:
    """The per-slot weight cache (effective ranks, packed B): hits, misses, uncached preparations, entries."""
    hits, misses, uncached, entries = (int(v) for v in torch.ops.llmaas.cache_stats())
    return {"hits": hits, "misses": misses, "uncached": uncached, "entries": entries}


def cache_clear() -> None:
    """Forgets every prepared weight (the next calls prepare them again)."""
    torch.ops.llmaas.cache_clear()


def lora_shrink(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    indices: torch.Tensor,
    scale: float,
) -> None:
    """``outputs[i][t, :r] = scale * x[t] @ weights[i][indices[t]].T`` for tokens with ``indices[t] >= 0``.

    ``x``: (tokens, in); ``weights[i]``: (slots, [1,] r, in); ``outputs[i]``: (tokens, >= r), fp32 or bf16.
    Rows of tokens without an adapter are left untouched."""
    if torch.compiler.is_compiling():
        torch.ops.llmaas.lora_shrink.default(x, weights, outputs, indices, scale)
    else:
        _eager().lora_shrink(x, weights, outputs, indices, scale)


def lora_expand(
    inputs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    output: torch.Tensor,
    indices: torch.Tensor,
    offset_start: int,
    slice_sizes: Sequence[int],
    add_inputs: bool,
) -> None:
    """``output[t, o_i : o_i + n_i] (+)= inputs[i][t] @ weights[i][indices[t], :n_i].T`` for adapter tokens, where
    ``o_0 = offset_start``, ``o_{i+1} = o_i + n_i`` and ``n_i = slice_sizes[i]``.

    ``inputs[i]``: (tokens, r); ``weights[i]``: (slots, [1,] >= n_i, r); ``output``: (tokens, width)."""
    if torch.compiler.is_compiling():
        torch.ops.llmaas.lora_expand.default(inputs, weights, output, indices, offset_start, slice_sizes, add_inputs)
    else:
        _eager().lora_expand(inputs, weights, output, indices, offset_start, slice_sizes, add_inputs)


def lora_linear(
    output: torch.Tensor,
    x: torch.Tensor,
    lora_a: Sequence[torch.Tensor],
    lora_b: Sequence[torch.Tensor],
    indices: torch.Tensor,
    scale: float,
    slice_sizes: Sequence[int],
    offset_start: int = 0,
) -> None:
    """Shrink and expand of a whole (merged) linear layer in one call, with an fp32 intermediate:
    ``output[t, o_i : o_i + n_i] += (x[t] @ lora_a[i][s].T * scale) @ lora_b[i][s, :n_i].T``, ``s = indices[t]``."""
    if torch.compiler.is_compiling():
        torch.ops.llmaas.lora_linear.default(output, x, lora_a, lora_b, indices, scale, offset_start, slice_sizes)
    else:
        _eager().lora_linear(output, x, lora_a, lora_b, indices, scale, offset_start, slice_sizes)
