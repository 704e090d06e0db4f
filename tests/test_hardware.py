"""The dtype the engine, training and the LoRA kernels run in, chosen from the hardware: bf16 only where the CPU
computes it natively, fp32 elsewhere, the model's own on a GPU (faked capabilities, and this machine's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.hardware import Hardware, choose_layout, detect, resolve_dtype


def machine(*, native_bf16: bool = False, gpu: bool = False, isa: str = "AVX2") -> Hardware:
    return Hardware(cpu="test CPU", cores=2, isa=isa, native_bf16=native_bf16, gpu=gpu)


@pytest.mark.parametrize(
    ("hardware", "chosen"),
    [
        (machine(isa="AVX2"), "float32"),  # bf16 matmuls run ~50x slower than fp32 here
        (machine(isa="AVX512"), "float32"),  # AVX-512 without its BF16 extension: still emulated
        (machine(isa="AVX512", native_bf16=True), "bfloat16"),
        (machine(isa="AMX", native_bf16=True), "bfloat16"),
        (machine(gpu=True), "auto"),  # the model's own dtype
    ],
)
def test_auto_picks_the_fastest_dtype_that_keeps_quality(hardware: Hardware, chosen: str) -> None:
    assert resolve_dtype("auto", hardware) == chosen


def test_an_explicit_dtype_is_kept() -> None:
    assert resolve_dtype("bfloat16", machine()) == "bfloat16"
    assert resolve_dtype("float32", machine(native_bf16=True)) == "float32"


def test_this_machine() -> None:
    import torch

    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    here = detect()
    assert here.isa == torch.backends.cpu.get_cpu_capability()
    assert here.native_bf16 == bool({"avx512_bf16", "amx_bf16"} & set(flags))
    assert resolve_dtype("auto", here) == ("bfloat16" if here.native_bf16 else "float32")
    assert here.isa in here.describe()


def sized(cores: int) -> Hardware:
    return Hardware(cpu="test CPU", cores=cores, isa="AVX2", native_bf16=False, gpu=False)


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_small_machines_run_the_model_in_the_engine_core_on_every_core(cores: int) -> None:
    layout = choose_layout(sized(cores), None, None)
    assert not layout.worker_process
    assert layout.environment() == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert f"engine-core process, on all {cores} cores" in layout.describe(cores)


@pytest.mark.parametrize("cores", [8, 64])
def test_larger_machines_keep_vllms_own_layout(cores: int) -> None:
    layout = choose_layout(sized(cores), None, None)
    assert (layout.worker_process, layout.reserved_cores) == (True, 1)
    assert layout.environment() == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
    }
    assert f"{cores - 1} of {cores} cores" in layout.describe(cores)


def test_the_layout_asked_for_wins() -> None:
    layout = choose_layout(sized(2), True, None)
    assert (layout.worker_process, layout.reserved_cores) == (True, 0)  # a small machine reserves nothing
    assert choose_layout(sized(8), None, 3).reserved_cores == 3
    assert choose_layout(sized(2), True, 5).reserved_cores == 1  # never every core
    assert not choose_layout(sized(64), False, None).worker_process
