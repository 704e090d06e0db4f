"""The machine a benchmark ran on, printed and stored beside every number: CPU model, the ISA level torch
dispatches to (``AVX2``, ``AVX512``, ...), whether the CPU has native bf16, and the core count."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    import torch

    flags = _cpu_flags()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def describe(facts: dict[str, Any]) -> str:
    bf16 = "native bf16" if facts["native_bf16"] else "no native bf16"
    return f"{facts['cpu']}, {facts['cores']} cores, {facts['isa']}, {bf16}"
