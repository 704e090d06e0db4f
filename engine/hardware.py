"""What this machine is good at: the ISA level torch dispatches to, whether the CPU computes bf16 natively, and
from that the fastest dtype that keeps the model's quality — bf16 only where the CPU has native bf16
(AVX512-BF16 or AMX), fp32 otherwise (on an AVX2-only CPU a bf16 matmul is ~50x slower than fp32), the model's
own dtype on a GPU. Serving, training and our LoRA kernels all follow the same choice. And the thread layout of
vLLM's CPU worker for the machine's size (``choose_layout``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
"""What ``LLMAAS_DTYPE`` may say; "auto" is resolved by ``resolve_dtype``."""
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_AMX_FLAG = "amx_bf16"


@dataclass(frozen=True)
class Hardware:
    cpu: str
    cores: int
    isa: str
    """torch's CPU capability: "AVX2", "AVX512", ..."""
    native_bf16: bool
    gpu: bool
    amx: bool = False
    """AMX bf16 tiles (the float GEMM's fast path for bf16)."""

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
        amx=_AMX_FLAG in flags,
    )


def resolve_dtype(requested: Dtype, hardware: Hardware) -> Dtype:
    """The dtype to run: what was asked, or for "auto" the fastest that keeps quality on this hardware."""
    if requested != "auto":
        return requested
    if hardware.gpu:
        return "auto"  # vLLM takes the model's own dtype
    return "bfloat16" if hardware.native_bf16 else "float32"


SMALL_MACHINE_CORES = 4
"""Up to this many cores, the model runs in the engine-core process on every core (``choose_layout``)."""


@dataclass(frozen=True)
class ThreadLayout:
    """Where vLLM's CPU backend runs the model, in vLLM's own settings."""

    worker_process: bool
    """True: in a worker process of its own (vLLM's multiprocess executor: the engine-core process schedules,
    hands each step to the worker through shared memory and polls for its result), its OpenMP threads pinned one
    per core. False: in the engine-core process itself (vLLM's single-process executor: one process and one
    hand-off fewer per step), on torch's threads, one per core."""
    reserved_cores: int
    """With a worker process: cores kept free of its threads, for the front end and the engine core."""

    def environment(self) -> dict[str, str]:
        if not self.worker_process:
            return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        return {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.reserved_cores),
            "VLLM_CPU_OMP_THREADS_BIND": "auto",
        }

    def describe(self, cores: int) -> str:
        if not self.worker_process:
            return f"model in the engine-core process, on all {cores} cores"
        return f"model in a worker process, on {max(cores - self.reserved_cores, 1)} of {cores} cores (pinned)"


def choose_layout(hardware: Hardware, worker_process: bool | None, reserved_cores: int | None) -> ThreadLayout:
    """What was asked, and for each None what measured best for the machine's size (README, Benchmarks): on a
    small machine the model in the engine-core process on every core (at 32 streams on 2 cores: 706 output tok/s,
    against 564 for a worker pinned to both cores, 459 unpinned, and 484 for vLLM's own layout, which keeps one
    core free); on a larger one vLLM's own layout."""
    small = hardware.cores <= SMALL_MACHINE_CORES
    if worker_process is None:
        worker_process = not small
    if reserved_cores is None:
        reserved_cores = 0 if small else 1
    return ThreadLayout(worker_process=worker_process, reserved_cores=max(0, min(reserved_cores, hardware.cores - 1)))
