"""Our C++ LoRA kernels (``engine/kernels``) against a float64 reference of ``x @ A.T @ B.T * scale``: random
shapes, ranks 8/16/64, fp32 and bf16, decode and prefill batches, merged-layer slices, tokens without an adapter
(left untouched: outputs are poisoned with NaN first), zero-padded ranks, the weight cache's invalidation; our
punica wrapper against vLLM's own CPU wrapper on the same batch metadata; and the short paths through vLLM's
LoRA layers against the long ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import kernels
from engine.kernels import vllm_plugin

DTYPES = (torch.float32, torch.bfloat16)
# Relative to the largest reference magnitude: fp32 accumulates in fp32; bf16 rounds inputs and outputs to bf16
# (8 significant bits) as vLLM's ops do.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}
SLOTS = 4
# name -> (tokens, input width, output slices): decode and prefill batches; odd sizes exercise the vector tails.
SHAPES = {
    "decode-qkv": (32, 576, (576, 192, 192)),
    "decode-odd": (7, 100, (37,)),
    "prefill-gate-up": (300, 576, (1536, 1536)),
    "prefill-down": (161, 1536, (576,)),
}


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    kernels.load()  # JIT build on first use on this machine (~30 s), cached afterwards


def token_indices(tokens: int, mix: str, generator: torch.Generator) -> torch.Tensor:
    """Per-token adapter slots (-1: no adapter), laid out the way vLLM's batches are."""
    if mix == "one":
        return torch.full((tokens,), 2, dtype=torch.long)
    if mix == "none":
        return torch.full((tokens,), -1, dtype=torch.long)
    if mix == "runs":  # prefill: each sequence's tokens share an adapter
        lengths = torch.randint(1, max(2, tokens // 4), (tokens,), generator=generator)
        slots = torch.randint(-1, SLOTS, (tokens,), generator=generator)
        return torch.repeat_interleave(slots, lengths)[:tokens].contiguous()
    # "mixed": decode, every token its own request, about a fifth without an adapter
    return torch.randint(-1, SLOTS, (tokens,), generator=generator)


def stack(slots: int, rows: int, cols: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """A vLLM-style (slots, 1, rows, cols) weight stack of random weights."""
    weights = torch.randn(slots, 1, rows, cols, generator=generator) / cols**0.5
    return weights.to(dtype)


def reference(
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    indices: torch.Tensor,
    scale: float,
    slices: tuple[int, ...],
) -> torch.Tensor:
    """float64 ``x @ A[s].T @ B[s].T * scale`` per token and slice, concatenated over slices; 0 without adapter."""
    out = torch.zeros(x.shape[0], sum(slices), dtype=torch.float64)
    for t, slot in enumerate(indices.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a, b, n in zip(lora_a, lora_b, slices, strict=True):
            shrunk = x[t].double() @ a[slot, 0].double().T * scale
            out[t, offset : offset + n] = shrunk @ b[slot, 0, :n].double().T
            offset += n
    return out


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().item() or 1.0
    return (actual.double() - expected).abs().max().item() / scale


def case(shape: str, rank: int, dtype: torch.dtype, mix: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens, width, slices = SHAPES[shape]
    lora_a = [stack(SLOTS, rank, width, dtype, generator) for _ in slices]
    lora_b = [stack(SLOTS, n, rank, dtype, generator) for n in slices]
    x = torch.randn(tokens, width, generator=generator).to(dtype)
    indices = token_indices(tokens, mix, generator)
    return {"x": x, "a": lora_a, "b": lora_b, "indices": indices, "slices": slices, "scale": 0.5}


PARAMS = [
    pytest.param(shape, rank, dtype, mix, id=f"{shape}-r{rank}-{str(dtype)[6:]}-{mix}")
    for shape in SHAPES
    for rank in (8, 16, 64)
    for dtype in DTYPES
    for mix in (("mixed", "one") if shape.startswith("decode") else ("runs",))
]


@pytest.mark.parametrize(("shape", "rank", "dtype", "mix"), PARAMS)
def test_fused_linear_matches_reference(shape: str, rank: int, dtype: torch.dtype, mix: str) -> None:
    c = case(shape, rank, dtype, mix)
    base = torch.randn(c["x"].shape[0], sum(c["slices"])).to(dtype)
    y = base.clone()
    kernels.lora_linear(y, c["x"], c["a"], c["b"], c["indices"], c["scale"], c["slices"])
    expected = base.double() + reference(c["x"], c["a"], c["b"], c["indices"], c["scale"], c["slices"])
    assert relative_error(y, expected) <= TOLERANCE[dtype]
    untouched = c["indices"] < 0
    assert torch.equal(y[untouched], base[untouched])


@pytest.mark.parametrize(("shape", "rank", "dtype", "mix"), PARAMS)
def test_shrink_then_expand_slices_match_reference(shape: str, rank: int, dtype: torch.dtype, mix: str) -> None:
    c = case(shape, rank, dtype, mix, seed=1)
    tokens, active = c["x"].shape[0], c["indices"] >= 0
    buffers = [torch.full((tokens, rank), float("nan")) for _ in c["slices"]]  # fp32, as vLLM's buffers
    kernels.lora_shrink(c["x"], c["a"], buffers, c["indices"], c["scale"])
    for a, buffer in zip(c["a"], buffers, strict=True):
        eye = [torch.eye(rank).reshape(1, 1, rank, rank).expand(SLOTS, 1, rank, rank)]
        expected = reference(c["x"], [a], eye, c["indices"], c["scale"], (rank,))
        assert relative_error(buffer[active], expected[active]) <= TOLERANCE[torch.float32] * 10
        assert torch.isnan(buffer[~active]).all(), "a token without adapter was written"
    # expand into the middle of a wider output (offset_start), without add_inputs: every written element is new
    offset, width = 3, sum(c["slices"]) + 5
    y = torch.full((tokens, width), float("nan")).to(dtype)
    kernels.lora_expand(buffers, c["b"], y, c["indices"], offset, c["slices"], False)
    expected = reference(c["x"], c["a"], c["b"], c["indices"], c["scale"], c["slices"])
    written = y[active, offset : offset + expected.shape[1]]
    assert relative_error(written, expected[active]) <= TOLERANCE[dtype]
    assert torch.isnan(y[~active]).all(), "a token without adapter was written"
    assert torch.isnan(y[:, :offset]).all() and torch.isnan(y[:, offset + expected.shape[1] :]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_expand_adds_into_the_output(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    tokens, rank, width = 24, 16, 200
    x = torch.randn(tokens, rank, generator=generator)
    b = stack(SLOTS, width, rank, dtype, generator)
    indices = token_indices(tokens, "mixed", generator)
    base = torch.randn(tokens, width, generator=generator).to(dtype)
    y = base.clone()
    kernels.lora_expand([x], [b], y, indices, 0, [width], True)
    eye = [torch.eye(rank).reshape(1, 1, rank, rank).expand(SLOTS, 1, rank, rank)]
    expected = base.double() + reference(x, eye, [b], indices, 1.0, (width,))
    assert relative_error(y, expected) <= TOLERANCE[dtype]


def test_batch_without_adapters_writes_nothing() -> None:
    c = case("decode-qkv", 8, torch.bfloat16, "none")
    y = torch.full((c["x"].shape[0], sum(c["slices"])), float("nan")).to(torch.bfloat16)
    kernels.lora_linear(y, c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
    buffers = [torch.full((c["x"].shape[0], 8), float("nan")) for _ in c["slices"]]
    kernels.lora_shrink(c["x"], c["a"], buffers, c["indices"], 1.0)
    kernels.lora_expand(buffers, c["b"], y, c["indices"], 0, c["slices"], False)
    assert torch.isnan(y).all() and all(torch.isnan(b).all() for b in buffers)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_padded_ranks_and_empty_slots(dtype: torch.dtype) -> None:
    """vLLM stores an r=8 adapter zero-padded in a max_lora_rank stack and leaves untargeted modules at zero."""
    c = case("decode-qkv", 16, dtype, "mixed", seed=4)
    for a, b in zip(c["a"], c["b"], strict=True):
        a[:, :, 8:] = 0  # every slot: rank 8 in a rank-16 stack
        b[:, :, :, 8:] = 0
    c["b"][1][1] = 0  # slot 1 does not target the second slice
    c["a"][2][3] = 0  # nor slot 3 the third
    base = torch.randn(c["x"].shape[0], sum(c["slices"])).to(dtype)
    y = base.clone()
    kernels.lora_linear(y, c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
    expected = base.double() + reference(c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
    assert relative_error(y, expected) <= TOLERANCE[dtype]
    buffers = [torch.full((c["x"].shape[0], 16), float("nan")) for _ in c["slices"]]
    kernels.lora_shrink(c["x"], c["a"], buffers, c["indices"], 1.0)
    active = c["indices"] >= 0
    assert all((b[active, 8:] == 0).all() for b in buffers), "padded ranks must still be written (as zeros)"


def test_weight_changes_are_seen() -> None:
    """The prepared-weight cache follows in-place writes (vLLM's set_lora/reset_lora) and reallocations."""
    c = case("decode-qkv", 8, torch.bfloat16, "mixed", seed=5)

    def run() -> torch.Tensor:
        y = torch.zeros(c["x"].shape[0], sum(c["slices"]), dtype=torch.bfloat16)
        kernels.lora_linear(y, c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
        return y

    def check(y: torch.Tensor) -> None:
        expected = reference(c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
        assert relative_error(y, expected) <= TOLERANCE[torch.bfloat16]

    check(run())
    c["b"][0][1, 0, :, :4].mul_(-3)  # set_lora writes through a view of the stack
    c["a"][2][0].copy_(torch.randn_like(c["a"][2][0]))
    check(run())
    for layer in range(2):  # reset_lora, then a new adapter in the same slot
        c["a"][layer][2] = 0
        c["b"][layer][2] = 0
        check(run())
    generator = torch.Generator().manual_seed(6)
    for _ in range(10):  # fresh stacks, freed each round: the allocator hands back the same addresses
        c["a"] = [stack(SLOTS, 8, 576, torch.bfloat16, generator) for _ in c["slices"]]
        c["b"] = [stack(SLOTS, n, 8, torch.bfloat16, generator) for n in c["slices"]]
        check(run())


def test_inference_mode_weights_are_prepared_per_call() -> None:
    with torch.inference_mode():
        c = case("decode-odd", 8, torch.float32, "mixed", seed=7)
        before = kernels.cache_stats()["uncached"]
        y = torch.zeros(c["x"].shape[0], sum(c["slices"]))
        kernels.lora_linear(y, c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
        assert kernels.cache_stats()["uncached"] > before
    expected = reference(c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])
    assert relative_error(y, expected) <= TOLERANCE[torch.float32]


def test_bad_input_is_an_error_not_a_crash() -> None:
    c = case("decode-odd", 8, torch.float32, "mixed")
    y = torch.zeros(c["x"].shape[0], sum(c["slices"]))
    with pytest.raises(RuntimeError, match="out of range"):
        kernels.lora_linear(y, c["x"], c["a"], c["b"], torch.full_like(c["indices"], SLOTS), 1.0, c["slices"])
    with pytest.raises(RuntimeError, match="token indices"):
        kernels.lora_linear(y, c["x"], c["a"], c["b"], c["indices"][:-1], 1.0, c["slices"])
    with pytest.raises(RuntimeError, match="slices end"):
        kernels.lora_linear(y[:, :-1], c["x"], c["a"], c["b"], c["indices"], 1.0, c["slices"])


# -- our punica wrapper against vLLM's, on the metadata vLLM builds ------------------------------------------------


def wrappers(index_mapping: list[int], prompt_mapping: list[int]) -> tuple:
    from vllm.lora.layers import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    from engine.kernels.punica_wrapper import LLMaaSPunicaWrapperCPU

    # Slots 0-2 hold adapters 1-3 and the last slot is empty: vLLM's fallback applies the last slot to tokens
    # without an adapter (it indexes its stack with -1), which is harmless only while that slot is zero.
    mapping = LoRAMapping(tuple(index_mapping), tuple(prompt_mapping), is_prefill=True)
    made = []
    for cls in (PunicaWrapperCPU, LLMaaSPunicaWrapperCPU):
        wrapper = cls(max_num_batched_tokens=1024, max_batches=64, device="cpu")
        wrapper.update_metadata(mapping, [1, 2, 3, None], SLOTS + 1, 49152)
        made.append(wrapper)
    return tuple(made)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wrapper_linear_matches_vllm(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 4, (40,), generator=generator).tolist()  # lora ids; 0: none
    vllm_wrapper, ours = wrappers(ids, ids)
    slices = (576, 192, 192)
    lora_a = tuple(stack(SLOTS, 16, 576, dtype, generator) for _ in slices)
    lora_b = tuple(stack(SLOTS, n, 16, dtype, generator) for n in slices)
    for weights in (*lora_a, *lora_b):
        weights[3] = 0  # the empty last slot
    x = torch.randn(40, 576, generator=generator).to(dtype)
    base = torch.randn(40, sum(slices), generator=generator).to(dtype)
    expected, actual = base.clone(), base.clone()
    vllm_wrapper.add_lora_linear(expected, x, lora_a, lora_b, 0.5, slices)
    ours.add_lora_linear(actual, x, lora_a, lora_b, 0.5, slices)
    assert relative_error(actual, expected.double()) <= TOLERANCE[dtype] / 2
    # the row-parallel path: separate shrink into vLLM's zeroed fp32 buffer, then expand
    buffers = [torch.zeros(40, 16) for _ in slices], [torch.zeros(40, 16) for _ in slices]
    expected, actual = base.clone(), base.clone()
    for wrapper, buffer, y in ((vllm_wrapper, buffers[0], expected), (ours, buffers[1], actual)):
        wrapper.add_shrink(buffer, x, lora_a, 0.5)
        wrapper.add_expand(y, buffer, lora_b, slices, offset_start=0, add_inputs=True)
    assert relative_error(actual, expected.double()) <= TOLERANCE[dtype] / 2


def test_wrapper_logits_and_embedding_match_vllm() -> None:
    generator = torch.Generator().manual_seed(9)
    ids = [1, 0, 2, 3, 0, 1]
    vllm_wrapper, ours = wrappers(ids, ids)
    vocab, hidden, rank = 1000, 64, 8
    lora_a = stack(SLOTS, rank, hidden, torch.bfloat16, generator)
    lora_b = stack(SLOTS, vocab + 24, rank, torch.bfloat16, generator)  # padded vocab rows, as vLLM allocates
    lora_a[3], lora_b[3] = 0, 0
    hidden_states = torch.randn(len(ids), hidden, generator=generator).to(torch.bfloat16)
    logits = torch.randn(len(ids), vocab, generator=generator).to(torch.bfloat16)
    expected, actual = logits.clone(), logits.clone()
    vllm_wrapper.add_lora_logits(expected, hidden_states, lora_a, lora_b, 1.0)
    ours.add_lora_logits(actual, hidden_states, lora_a, lora_b, 1.0)
    assert relative_error(actual, expected.double()) <= 1e-2
    embedding_b = stack(SLOTS, hidden, rank, torch.bfloat16, generator)
    embedding_b[3] = 0
    lora_a_rows = torch.randn(len(ids), rank, generator=generator).to(torch.bfloat16)
    base = torch.randn(len(ids), hidden, generator=generator).to(torch.bfloat16)
    expected, actual = base.clone(), base.clone()
    vllm_wrapper.add_lora_embedding(expected, lora_a_rows, embedding_b, True)
    ours.add_lora_embedding(actual, lora_a_rows, embedding_b, True)
    assert relative_error(actual, expected.double()) <= 1e-2


def test_wrapper_skips_batches_without_adapters_and_falls_back_for_other_dtypes() -> None:
    _, ours = wrappers([0] * 8, [0] * 8)
    x = torch.randn(8, 64)
    y = torch.full((8, 32), float("nan"))
    ours.add_lora_linear(y, x, (torch.randn(SLOTS, 1, 8, 64),), (torch.randn(SLOTS, 1, 32, 8),), 1.0, (32,))
    assert torch.isnan(y).all()
    vllm_wrapper, ours = wrappers([1, 2, 0, 1], [1, 2, 0, 1])
    lora_a = (torch.randn(SLOTS, 1, 8, 64).half(),)
    lora_b = (torch.randn(SLOTS, 1, 32, 8).half(),)
    lora_a[0][3], lora_b[0][3] = 0, 0
    x, base = torch.randn(4, 64).half(), torch.randn(4, 32).half()
    expected, actual = base.clone(), base.clone()
    vllm_wrapper.add_lora_linear(expected, x, lora_a, lora_b, 1.0, (32,))
    ours.add_lora_linear(actual, x, lora_a, lora_b, 1.0, (32,))  # fp16: vLLM's own op
    assert torch.equal(actual, expected)


# -- the short paths through vLLM's LoRA layers (engine/kernels/lora_layers.py) --------------------------------


class StandInLoRALinear(torch.nn.Module):
    """Shaped like vLLM's LoRA linear wrappers (a base layer, weight stacks, slices, tp_size, ``apply``); its own
    ``forward`` is the long path and counts its calls."""

    def __init__(self, punica: object, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = torch.nn.Linear(64, 32, bias=False, dtype=torch.bfloat16)
        self.punica_wrapper = punica
        self.tp_size = 1
        self.lora_a_stacked = (stack(SLOTS, 8, 64, torch.bfloat16, generator),)
        self.lora_b_stacked = (stack(SLOTS, 32, 8, torch.bfloat16, generator),)
        self.lora_a_stacked[0][3], self.lora_b_stacked[0][3] = 0, 0  # the empty last slot
        self.output_slices = (32,)
        self.long_path_calls = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.long_path_calls += 1
        y = self.base_layer(x)
        self.punica_wrapper.add_lora_linear(y, x, self.lora_a_stacked, self.lora_b_stacked, 1.0, self.output_slices)
        return y


def test_short_paths_give_the_long_paths_output(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.kernels import lora_layers

    class Patched(StandInLoRALinear):
        pass

    Patched.forward = lora_layers.short_forward(StandInLoRALinear.forward, frozenset({StandInLoRALinear.apply}))
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(4, 64, generator=generator).to(torch.bfloat16)
    ids = [1, 2, 0, 1]

    vllm_wrapper, ours = wrappers(ids, ids)
    layer = Patched(ours, generator)
    expected = StandInLoRALinear.forward(layer, x)  # the long path, on the same weights
    layer.long_path_calls = 0
    assert torch.equal(layer(x), expected) and layer.long_path_calls == 0  # adapters in the batch: base + delta
    assert not torch.equal(expected, layer.base_layer(x))

    _, idle = wrappers([0] * 4, [0] * 4)
    layer.punica_wrapper = idle
    assert torch.equal(layer(x), layer.base_layer(x)) and layer.long_path_calls == 0  # no adapter: base alone

    for change in ("tensor parallel", "another apply", "vLLM's wrapper", "torch.compile tracing"):
        layer.punica_wrapper, layer.tp_size = ours, 1
        if change == "tensor parallel":
            layer.tp_size = 2
        elif change == "vLLM's wrapper":
            layer.punica_wrapper = vllm_wrapper
        elif change == "torch.compile tracing":
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        patched = lora_layers.short_forward(StandInLoRALinear.forward, frozenset())
        layer.long_path_calls = 0
        out = patched(layer, x) if change == "another apply" else layer(x)
        assert layer.long_path_calls == 1, change
        assert relative_error(out, expected.double()) <= TOLERANCE[torch.bfloat16], change


def test_short_paths_are_installed_on_vllms_layers_once() -> None:
    from vllm.lora.layers import (
        ColumnParallelLinearWithLoRA,
        RowParallelLinearWithLoRA,
        VocabParallelEmbeddingWithLoRA,
    )

    from engine.kernels import lora_layers

    wrappers([1], [1])  # building our wrapper installs them
    for cls in (ColumnParallelLinearWithLoRA, RowParallelLinearWithLoRA, VocabParallelEmbeddingWithLoRA):
        assert getattr(cls.forward, lora_layers.MARKER, False), cls
        assert not getattr(cls.forward.__wrapped__, lora_layers.MARKER, False), cls
    assert lora_layers.install() == []


# -- the vLLM plugin's choice of wrapper ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "broken_compiler", "wrapper"),
    [
        ("llmaas", False, vllm_plugin.OUR_WRAPPER),
        ("vllm", False, vllm_plugin.CPU_WRAPPER),
        ("llmaas", True, vllm_plugin.CPU_WRAPPER),  # cannot build: logged once, vLLM's ops serve
    ],
)
def test_plugin_picks_the_wrapper(mode: str, broken_compiler: bool, wrapper: str, tmp_path: Path) -> None:
    code = (
        "from engine.kernels import vllm_plugin\n"
        "vllm_plugin.register()\n"
        "vllm_plugin.register()\n"  # vLLM may call it more than once
        "from vllm.platforms import current_platform\n"
        "print('WRAPPER', current_platform.get_punica_wrapper())\n"
    )
    env = {**os.environ, "LLMAAS_LORA_KERNELS": mode}
    if broken_compiler:
        env.update(LLMAAS_KERNEL_CACHE_DIR=str(tmp_path), CXX=str(tmp_path / "no-such-compiler"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"WRAPPER {wrapper}" in proc.stdout
    if broken_compiler:
        assert (proc.stdout + proc.stderr).count("LLMaaS LoRA kernels unavailable") == 1


def test_the_build_runs_the_isa_it_was_built_for() -> None:
    flags = next(
        (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
    ).split()
    forced = os.environ.get(kernels.MARCH_ENV)
    if forced == "haswell" or "avx512f" not in flags:
        expected = "avx2"
    else:  # AVX-512, with its bf16 dot products where the CPU has them
        expected = "avx512+bf16" if "avx512_bf16" in flags else "avx512"
    assert kernels.isa() == expected


def test_the_avx2_path_matches_the_reference_on_any_cpu(tmp_path: Path) -> None:
    """The AVX2 build (what AVX2-only CPUs run) checked here too when this CPU has AVX-512: a separate build with
    ``-march=haswell`` in its own cache dir, in another process, through the reference tests above."""
    if kernels.isa() == "avx2":
        pytest.skip("this CPU runs the AVX2 build itself: the reference tests above checked it")
    env = {**os.environ, kernels.MARCH_ENV: "haswell", kernels.CACHE_ENV: str(tmp_path)}
    selection = "fused_linear_matches_reference or shrink_then_expand or runs_the_isa"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
