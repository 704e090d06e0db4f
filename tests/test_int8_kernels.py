"""Our C++ int8 linear kernels (``engine/kernels/int8.py``) on every ISA path this CPU can run (the others skipped
with the reason): against a float64 reference of ``x @ unpack_weight(packed, scales).T + bias`` and against the
fp32 weight within the quantization error bound, on random shapes (odd K and N, K not a multiple of any vector
width, 1..64 rows, fp32 and bf16 x, with and without bias, 3-D x); dynamically quantized activations (w8a8)
against the same per-row quantization done in torch; pack/unpack round trips and scale edge cases; and that the
default path is the best one the CPU supports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.kernels import int8
from tests.support.kernel_paths import path_params

# What each path needs, for the skip reason on CPUs without it.
NEEDS = {
    "avx512_bf16": "AVX-512 (F/BW/VL) with VNNI and BF16",
    "avx512_vnni": "AVX-512 (F/BW/VL) with VNNI",
    "avx512": "AVX-512 (F/BW/VL)",
    "avx2_vnni": "AVX2+FMA with AVX-VNNI",
    "avx2": "AVX2+FMA",
    "portable": "nothing",
}
# The /proc/cpuinfo flags each path needs, the best path first.
CPU_FLAGS = {
    "avx512_bf16": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx2", "fma"},
    "avx512_vnni": {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx2", "fma"},
    "avx2_vnni": {"avx2", "fma", "avx_vnni"},
    "avx2": {"avx2", "fma"},
    "portable": set(),
}
# (rows, N, K): decode and batch sizes (up to 16 rows the GEMV in passes of 6 or 12, more the fp32 tile; bf16 on
# avx512_bf16: dot products in passes of 16 at every size); odd N leaves a partial 16-row block, odd K a partial
# group of 4.
SHAPES = [
    (1, 37, 101), (3, 576, 576), (17, 33, 1537), (64, 192, 575), (1, 1, 1), (5, 16, 4), (2, 100, 6), (14, 50, 203),
    (8, 33, 64), (13, 40, 96), (16, 24, 40),
]  # fmt: skip
DTYPES = (torch.float32, torch.bfloat16)
# Relative to the reference's largest magnitude. fp32: fp32 accumulation; bf16: x and the result are bf16.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    if not int8.available():
        pytest.fail(f"the int8 kernels did not build: {int8.LIBRARY.load_error()}")


PATHS = path_params(int8.PATHS, int8.supported_isas(), NEEDS)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """x rows after symmetric per-row int8 quantization (what ``dynamic_activations`` computes with)."""
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    return torch.round(x / torch.where(scale > 0, scale, 1.0)).clamp(-127, 127) * scale


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
def test_matches_the_reference_matmul(path: str, dtype: torch.dtype, rows: int, n: int, k: int) -> None:
    generator = torch.Generator().manual_seed(rows * 7919 + n * 31 + k)
    weight = torch.randn(n, k, generator=generator)
    packed, scales = int8.pack_weight(weight)
    dequantized = int8.unpack_weight(packed, scales).double()
    x = torch.randn(rows, k, generator=generator).to(dtype)
    for bias in (None, torch.randn(n, generator=generator)):
        y = int8.int8_linear(x, packed, scales, bias, isa=path)
        assert y.dtype == dtype and y.shape == (rows, n)
        ref = x.double() @ dequantized.T + (0 if bias is None else bias.double())
        assert relative_error(y, ref) < TOLERANCE[dtype]
        # against the fp32 weight: each product's error is at most |x| * scale / 2
        exact = x.double() @ weight.double().T + (0 if bias is None else bias.double())
        bound = x.double().abs() @ (scales.double() / 2).expand(k, n) * 1.001 + ref.abs() * TOLERANCE[dtype]
        assert bool(((y.double() - exact).abs() <= bound + 1e-6).all())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("rows", "n", "k"), SHAPES)
def test_dynamic_activations_match_per_row_quantization(path: str, rows: int, n: int, k: int) -> None:
    generator = torch.Generator().manual_seed(rows + n + k)
    weight = torch.randn(n, k, generator=generator)
    packed, scales = int8.pack_weight(weight)
    x = torch.randn(rows, k, generator=generator)
    x[0, 0] = 0.0  # exactly representable values survive quantization
    bias = torch.randn(n, generator=generator)
    y = int8.int8_linear(x, packed, scales, bias, dynamic_activations=True, isa=path)
    ref = quantize_rows(x.double()) @ int8.unpack_weight(packed, scales).double().T + bias.double()
    assert relative_error(y, ref) < 1e-5  # int32 dot products are exact; only the fp32 scaling rounds
    full = x.double() @ weight.double().T + bias.double()
    assert relative_error(y, full) < 0.03  # int8 x and int8 w: about 1 % of the largest output


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_activation_row_gives_nan_not_finite_garbage(path: str, poison: float) -> None:
    weight = torch.randn(40, 67, generator=torch.Generator().manual_seed(3))
    packed, scales = int8.pack_weight(weight)
    x = torch.randn(5, 67, generator=torch.Generator().manual_seed(4))
    x[2, 7] = poison
    for dynamic in (False, True):
        y = int8.int8_linear(x, packed, scales, dynamic_activations=dynamic, isa=path)
        assert not bool(torch.isfinite(y[2]).any())  # the float computation gives inf/NaN there too
        assert bool(torch.isfinite(y[[0, 1, 3, 4]]).all())


@pytest.mark.parametrize("path", PATHS)
def test_three_dimensional_x_and_empty_batches(path: str) -> None:
    weight = torch.randn(50, 70)
    packed, scales = int8.pack_weight(weight)
    x = torch.randn(2, 3, 70, dtype=torch.bfloat16)
    y = int8.int8_linear(x, packed, scales, isa=path)
    assert y.shape == (2, 3, 50) and y.dtype == torch.bfloat16
    flat = int8.int8_linear(x.reshape(6, 70), packed, scales, isa=path)
    assert torch.equal(y.reshape(6, 50), flat)
    assert int8.int8_linear(torch.randn(0, 70), packed, scales, isa=path).shape == (0, 50)
    strided = torch.randn(4, 140)[:, ::2]  # not contiguous
    assert (
        relative_error(
            int8.int8_linear(strided, packed, scales, isa=path),
            strided.double() @ int8.unpack_weight(packed, scales).double().T,
        )
        < TOLERANCE[torch.float32]
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pack_unpack_round_trip_and_scales(dtype: torch.dtype) -> None:
    weight = torch.randn(35, 13).to(dtype)
    weight[3] = 0.0  # an all-zero row: scale 0, dequantizes to zeros
    weight[5] = 1e-30  # tiny values: a tiny scale, not a division by zero
    weight[7, 2] = 1e6  # one outlier: the rest of its row rounds to 0
    packed, scales = int8.pack_weight(weight)
    assert packed.dtype == torch.int8 and packed.shape == (3, 13, 16)
    assert scales.dtype == torch.float32 and scales.shape == (35,)
    w = weight.float()
    assert torch.equal(scales, w.abs().amax(dim=1) / 127)
    assert scales[3] == 0 and bool(torch.isfinite(scales).all())
    dequantized = int8.unpack_weight(packed, scales)
    assert dequantized.shape == (35, 13) and torch.equal(dequantized[3], torch.zeros(13))
    assert bool(((dequantized - w).abs() <= scales[:, None] / 2 * 1.0001).all())
    assert packed.abs().max() <= 127  # symmetric: never -128 (keeps AVX2's maddubs from saturating)
    again, again_scales = int8.pack_weight(dequantized)  # packing a dequantized weight is exact
    assert torch.equal(again, packed) and torch.allclose(again_scales, scales)
    y = int8.int8_linear(torch.ones(1, 13), packed, scales)
    assert y[0, 3] == 0 and bool(torch.isfinite(y).all())


def test_bad_input_is_an_error_not_a_crash() -> None:
    packed, scales = int8.pack_weight(torch.randn(20, 8))
    with pytest.raises(RuntimeError, match="last dimension"):
        int8.int8_linear(torch.randn(2, 9), packed, scales)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        int8.int8_linear(torch.randn(2, 8).double(), packed, scales)
    with pytest.raises(RuntimeError, match="bias"):
        int8.int8_linear(torch.randn(2, 8), packed, scales, torch.randn(3))
    with pytest.raises(RuntimeError, match="scales"):
        int8.int8_linear(torch.randn(2, 8), packed, scales[:3])
    with pytest.raises(ValueError, match="unknown path"):
        int8.int8_linear(torch.randn(2, 8), packed, scales, isa="sse9")
    with pytest.raises(ValueError, match="weight must be"):
        int8.pack_weight(torch.randn(3))


def test_the_default_path_is_the_best_the_cpu_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = set(Path("/proc/cpuinfo").read_text().split())
    supported = int8.supported_isas()
    expected = next(name for name, needs in CPU_FLAGS.items() if needs <= flags)
    assert supported[0] == expected and supported[-1] == "portable"
    monkeypatch.delenv(int8.ISA_ENV, raising=False)
    monkeypatch.setattr(int8, "_default", None)
    assert int8.isa() == expected
    monkeypatch.setenv(int8.ISA_ENV, "portable")
    monkeypatch.setattr(int8, "_default", None)
    assert int8.isa() == "portable"
    monkeypatch.setenv(int8.ISA_ENV, "no-such-path")  # ignored: the best path
    monkeypatch.setattr(int8, "_default", None)
    assert int8.isa() == expected


def test_torch_compile_traces_the_op() -> None:
    packed, scales = int8.pack_weight(torch.randn(24, 40))
    bias = torch.randn(24)

    def layer(x: torch.Tensor) -> torch.Tensor:
        return int8.int8_linear(x, packed, scales, bias) * 2

    x = torch.randn(3, 40)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), layer(x))
