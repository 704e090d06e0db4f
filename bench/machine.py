"""The machine a benchmark ran on, printed and stored beside every number: CPU model, the ISA level torch
dispatches to (``AVX2``, ``AVX512``, ...), whether the CPU has native bf16, the core count, and what our engine
chooses from those by default — its dtype and thread layout (``engine.hardware``)."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

from engine.hardware import Hardware, choose_layout, detect, resolve_dtype


def machine() -> dict[str, Any]:
    import torch

    hardware = detect()
    return {
        **dataclasses.asdict(hardware),
        "dtype": resolve_dtype("auto", hardware),
        "threads": choose_layout(hardware, None, None).describe(hardware.cores),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def describe(facts: dict[str, Any]) -> str:
    hardware = Hardware(**{field.name: facts[field.name] for field in dataclasses.fields(Hardware)})
    return f"{hardware.describe()}; default dtype {facts['dtype']}, {facts['threads']}"
