"""The machine a benchmark ran on, printed and stored beside every number: CPU model, the ISA level torch
dispatches to (``AVX2``, ``AVX512``, ...), whether the CPU has native bf16, the core count, and what our engine
chooses from those by default — its dtype and thread layout (``engine.hardware``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
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
    # results written before a field was added lack it: its default
    hardware = Hardware(
        **{field.name: facts[field.name] for field in dataclasses.fields(Hardware) if field.name in facts}
    )
    return f"{hardware.describe()}; default dtype {facts['dtype']}, {facts['threads']}"


def write_results(args: argparse.Namespace, name: str, facts: dict[str, Any], **results: Any) -> Path:
    """``name`` (a JSON file) in ``args.results_dir``: the machine, the arguments and ``results``; its path."""
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    output = results_dir / name
    output.write_text(
        json.dumps({"machine": facts, "args": {**vars(args), "results_dir": str(results_dir)}, **results}, indent=2)
    )
    return output


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A Markdown table on stdout."""
    print(f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    for row in rows:
        print(f"| {' | '.join(row)} |")
