"""The machine a benchmark ran on, printed and stored beside every number: CPU model, the ISA level torch
dispatches to (``AVX2``, ``AVX512``, ...), whether the CPU has native bf16, and the core count
(``engine.hardware``, the same facts the engine chooses its dtype from)."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

from engine.hardware import Hardware, detect


def machine() -> dict[str, Any]:
    import torch

    return {**dataclasses.asdict(detect()), "python": platform.python_version(), "torch": torch.__version__}


def describe(facts: dict[str, Any]) -> str:
    return Hardware(**{field.name: facts[field.name] for field in dataclasses.fields(Hardware)}).describe()
