"""Our C++ SiLU-and-multiply (``engine/kernels/activation.py``) on every ISA path this CPU can run (the others
skipped with the reason): against a float64 reference of ``silu(x[..., :d]) * x[..., d:]`` on shapes whose width
leaves a tail past every vector width, one row to enough rows to split across threads, 3-D x, large and tiny
gates; bf16 rounded once to nearest even; NaN stays NaN; bad input refused; the default path follows PyTorch's
CPU capability (what ``ATEN_CPU_CAPABILITY`` lowers); and vLLM's SiluAndMul layer runs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.activation import SiluAndMul

from engine.kernels import activation, cpu_ops, vllm_plugin
from tests.support.kernel_paths import path_params

NEEDS = {"avx512": "AVX-512F with AVX2+FMA", "avx2": "AVX2+FMA", "portable": "nothing"}
# (..., 2d): d = 1536 is SmolLM2-135M's MLP; odd and small d leave tails past 16 and 8 lanes; 64 x 1536 splits rows
# across threads.
SHAPES = [(1, 3072), (5, 3072), (64, 3072), (3, 2), (7, 46), (2, 3, 202), (40, 1000)]


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    if not activation.available():
        pytest.fail(f"the activation kernel did not build: {activation.LIBRARY.load_error()}")


PATHS = path_params(activation.PATHS, activation.supported_isas(), NEEDS)


def reference(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    gate, up = x.double()[..., :d], x.double()[..., d:]
    return gate / (1 + torch.exp(-gate)) * up


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fp32_matches_a_float64_reference(path: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 6
    got = activation.silu_and_mul(x, isa=path)
    want = reference(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # the exponential within 2 ulp, an exact division and product: a few ulp of the result, elementwise
    torch.testing.assert_close(got.double(), want, rtol=5e-7, atol=1e-30)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bf16_is_the_fp32_result_rounded_once(path: str, shape: tuple[int, ...]) -> None:
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape) + 1)) * 6).to(torch.bfloat16)
    got = activation.silu_and_mul(x, isa=path)
    assert got.dtype == torch.bfloat16 and got.shape == (*shape[:-1], shape[-1] // 2)
    exact = reference(x).float()
    # rounding a value within a few fp32 ulp of the exact one: the nearest bf16 (one bf16 ulp is 2^-8..2^-7 of it),
    # or its neighbour near a tie
    torch.testing.assert_close(got.float(), exact.to(torch.bfloat16).float(), rtol=2**-7, atol=1e-30)
    assert (got.float() == exact.to(torch.bfloat16).float()).float().mean() > 0.99


@pytest.mark.parametrize("path", PATHS)
def test_large_and_tiny_gates_and_nan(path: str) -> None:
    gate = torch.tensor([100.0, 88.0, 30.0, 1e-30, 0.0, -0.0, -30.0, -88.0, -100.0, float("nan"), 2.0, -2.0] * 3)
    up = torch.ones_like(gate)
    up[[10, 22, 34]] = float("nan")
    x = torch.cat([gate, up])[None]
    for dtype in (torch.float32, torch.bfloat16):
        got = activation.silu_and_mul(x.to(dtype), isa=path).double()[0]
        want = reference(x.to(dtype))[0]
        assert torch.isnan(got[[9, 10, 21, 22, 33, 34]]).all()
        finite = ~torch.isnan(want)
        # silu(-100) underflows to a tiny negative (the exponential is clamped at e^88), not to -0
        rtol = 2**-7 if dtype == torch.bfloat16 else 5e-7
        torch.testing.assert_close(got[finite], want[finite], rtol=rtol, atol=1e-30)


def test_bad_input_is_refused() -> None:
    with pytest.raises(RuntimeError, match="even"):
        activation.silu_and_mul(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        activation.silu_and_mul(torch.zeros(2, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="unknown path"):
        activation.silu_and_mul(torch.zeros(2, 4), isa="sse2")
    assert activation.silu_and_mul(torch.zeros(0, 4)).shape == (0, 2)
    strided = torch.randn(4, 16)[:, ::2]
    torch.testing.assert_close(activation.silu_and_mul(strided).double(), reference(strided), rtol=5e-7, atol=1e-30)


def test_the_default_path_follows_pytorchs_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    supported = activation.supported_isas()
    # Here: the best this CPU runs, unless PyTorch's capability is lowered (ATEN_CPU_CAPABILITY=avx2 on an AVX-512
    # machine standing in for an AVX2 one), then the best at that capability.
    own = torch.backends.cpu.get_cpu_capability()
    assert activation.isa() == (supported[0] if own == "AVX512" else {"AVX2": "avx2"}.get(own, "portable"))
    try:
        for capability, want in (("AVX2", "avx2"), ("DEFAULT", "portable")):
            monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
            activation._default_path.cache_clear()
            assert activation.isa() == (want if want in supported else "portable")
    finally:
        activation._default_path.cache_clear()  # the next caller resolves this machine's own default again


@pytest.fixture
def vllm_config() -> Iterator[None]:
    vllm_plugin.register()
    with set_current_vllm_config(VllmConfig()):
        yield


@pytest.mark.usefixtures("vllm_config")
def test_vllms_silu_and_mul_layer_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.ops._C, "silu_and_mul", lambda *args: calls.append("vllm"))
    layer = SiluAndMul()
    assert isinstance(layer, cpu_ops.FusedSiluAndMul) and layer.ours
    x = torch.randn(32, 3072)
    torch.testing.assert_close(layer.forward_cpu(x), activation.silu_and_mul(x), rtol=0, atol=0)
    assert calls == []
