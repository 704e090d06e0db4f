"""What this machine is good at: the ISA level torch dispatches to, whether the CPU computes bf16 natively, and
from that the fastest dtype that keeps the model's quality — bf16 only where the CPU has native bf16
(AVX512-BF16 or AMX), fp32 otherwise (on an AVX2-only CPU a bf16 matmul is ~50x slower than fp32), the model's
own dtype on a GPU. Serving, training and our LoRA kernels all follow the same choice. And the thread layout of
vLLM's CPU worker for the machine's size (``choose_layout``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
"""What ``LLMAAS_DTYPE`` may say; "auto" is resolved by ``resolve_dtype``."""
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Hardware:
    cpu: str
    cores: int
    isa: str
    """torch's CPU capability: "AVX2", "AVX512", ..."""
    native_bf16: bool
    gpu: bool

    def describe(self) -> str:
        if self.gpu:
            return f"GPU; CPU {self.cpu}"
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        return f"{self.cpu}, {self.cores} cores, {self.isa}, {bf16}"


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


@lru_cache(maxsize=1)
def detect() -> Hardware:
    import torch

    model, flags = _cpuinfo()
    return Hardware(
        cpu=model,
        cores=os.cpu_count() or 1,
        isa=torch.backends.cpu.get_cpu_capability(),
        native_bf16=bool(_NATIVE_BF16_FLAGS & flags),
        gpu=bool(torch.cuda.is_available()),
    )


def resolve_dtype(requested: Dtype, hardware: Hardware) -> Dtype:
    """The dtype to run: what was asked, or for "auto" the fastest that keeps quality on this hardware."""
    if requested != "auto":
        return requested
    if hardware.gpu:
        return "auto"  # vLLM takes the model's own dtype
    return "bfloat16" if hardware.native_bf16 else "float32"


SMALL_MACHINE_CORES = 4
"""Up to this many cores, every core does model work (``choose_layout``)."""


@dataclass(frozen=True)
class ThreadLayout:
    """How vLLM's CPU worker lays its OpenMP threads on the cores, in vLLM's own settings."""

    reserved_cores: int
    """Cores kept free of model threads, for the front end and the engine-core process
    (``VLLM_CPU_NUM_OF_RESERVED_CPU``; vLLM itself keeps one)."""
    bind: str
    """``VLLM_CPU_OMP_THREADS_BIND``: "auto" (one thread pinned per core) or "nobind"."""

    def environment(self) -> dict[str, str]:
        return {"VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.reserved_cores), "VLLM_CPU_OMP_THREADS_BIND": self.bind}

    def describe(self, cores: int) -> str:
        if self.bind == "nobind":
            return f"model threads unpinned, torch's count, on {cores} cores"
        return f"{max(cores - self.reserved_cores, 1)} of {cores} cores run the model (OMP bind {self.bind})"


def choose_layout(hardware: Hardware, reserved_cores: int | None, environ: Mapping[str, str]) -> ThreadLayout:
    """``reserved_cores`` as asked, or for None: on a small machine none (at low load the front end and the
    engine core are mostly idle, and a reserved core is half the machine), on a larger one vLLM's single core.
    vLLM's own variables, where the operator set them in ``environ``, win."""
    if reserved_cores is None:
        reserved_cores = 0 if hardware.cores <= SMALL_MACHINE_CORES else 1
    reserved_cores = int(environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", reserved_cores))
    bind = environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    return ThreadLayout(reserved_cores=max(0, min(reserved_cores, hardware.cores - 1)), bind=bind)
