"""The roofline's arithmetic (bench/roofline.py): the default model's bytes and FLOPs per token from its config.json,
and the limit per case from stored measurements (nothing is measured here: a hand-written cache file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import roofline

BANDWIDTH_GB_S = 10.0
STEP_S = {"1": 0.060, "4": 0.062, "32": 0.200}
PEAK_GFLOP_S = 100.0


@pytest.fixture
def cache_dir(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The arithmetic does not depend on our int8 kernel: leave it unbuilt (its int8 limits use torch's int8 path).
    monkeypatch.setattr(roofline, "int8_kernel", lambda: None)
    shape = roofline.ModelShape.read(model_dir)
    path = roofline.cache_path(tmp_path, shape, roofline.engine_threads())
    kinds = roofline.gemm_kinds()
    path.write_text(
        json.dumps(
            {
                "version": roofline.CACHE_VERSION,
                "bandwidth_gb_s": BANDWIDTH_GB_S,
                "peak_gflop_s": dict.fromkeys(kinds, PEAK_GFLOP_S),
                "step_s": {kind: STEP_S for kind in kinds},
            }
        )
    )
    return tmp_path


def test_a_cache_from_another_boot_is_not_read(
    model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machines of one CPU name differ (two "AMD EPYC" VMs read 36 and 78 GB/s): each boot measures its own."""
    shape = roofline.ModelShape.read(model_dir)
    here = roofline.cache_path(cache_dir, shape, roofline.engine_threads())
    assert here.exists() and roofline.boot_id()
    monkeypatch.setattr(roofline, "boot_id", lambda: "another-boot")
    assert roofline.cache_path(cache_dir, shape, roofline.engine_threads()) != here


def test_the_default_model_reads_its_parameters_once_per_token(model_dir: Path) -> None:
    shape = roofline.ModelShape.read(model_dir)
    # SmolLM2-135M: 30 layers of 576 wide, 9 query and 3 KV heads of 64, MLP 1536, a 49152-token tied LM head.
    per_layer = 576 * (9 + 2 * 3) * 64 + 576 * 576 + 2 * 1536 * 576 + 576 * 1536
    assert shape.linear_params() == 30 * per_layer + 49152 * 576
    assert 134e6 < shape.linear_params() < 135e6  # the model's 134.5 M parameters, less the norms
    fp32 = shape.bytes_per_token("float32")
    assert shape.bytes_per_token("bfloat16") * 2 == fp32
    int8 = shape.bytes_per_token("float32", "int8")
    # The int8 weights and their scales do not depend on the dtype: only the norms and the embedding row do.
    assert int8 - shape.bytes_per_token("bfloat16", "w8a8") == 2 * shape.other_params_read()
    assert fp32 / 4 < int8 < fp32 / 4 * 1.01  # a byte a weight and an fp32 scale per output channel
    assert shape.flops_per_token(0) == 2 * shape.linear_params()
    assert shape.flops_per_token(256) - shape.flops_per_token(0) == 4 * 9 * 64 * 256 * 30


def test_one_stream_is_bounded_by_bandwidth_and_many_by_the_measured_gemm(model_dir: Path, cache_dir: Path) -> None:
    shape = roofline.ModelShape.read(model_dir)
    one = roofline.limits(model_dir, "float32", "none", 1, cache_dir=cache_dir)
    assert one.bound == "bandwidth"
    assert one.tok_s == pytest.approx(BANDWIDTH_GB_S * 1e9 / shape.bytes_per_token("float32"))
    assert one.weight_read_s == pytest.approx(1 / one.tok_s)
    int8 = roofline.limits(model_dir, "float32", "int8", 1, cache_dir=cache_dir)
    assert int8.tok_s == pytest.approx(
        one.tok_s * shape.bytes_per_token("float32") / shape.bytes_per_token("float32", "int8")
    )
    many = roofline.limits(model_dir, "float32", "none", 32, roofline.DEFAULT_CONTEXT, cache_dir=cache_dir)
    attention_s = 32 * shape.attention_flops(roofline.DEFAULT_CONTEXT) / (PEAK_GFLOP_S * 1e9)
    assert many.bound == "GEMM"
    assert many.tok_s == pytest.approx(32 / (STEP_S["32"] + attention_s))
    assert many.peak_tok_s == pytest.approx(PEAK_GFLOP_S * 1e9 / shape.flops_per_token(roofline.DEFAULT_CONTEXT))


def test_a_new_measurement_keeps_the_best_of_each_number() -> None:
    """On a shared machine load only slows a measurement down: the cache keeps the fastest seen."""
    cached = {"bandwidth_gb_s": 20.0, "peak_gflop_s": {"float32": 300.0}, "step_s": {"float32": {"1": 0.02}}}
    extra = {
        "bandwidth_gb_s": 10.0,
        "peak_gflop_s": {"float32": 350.0, "int8-torch": 500.0},
        "step_s": {"float32": {"1": 0.03, "4": 0.05}, "int8-torch": {"1": 0.01}},
    }
    roofline._keep_best(cached, extra)
    assert cached == {
        "bandwidth_gb_s": 20.0,
        "peak_gflop_s": {"float32": 350.0, "int8-torch": 500.0},
        "step_s": {"float32": {"1": 0.02, "4": 0.05}, "int8-torch": {"1": 0.01}},
    }


def test_prefilling_counts_every_prompt_token_through_the_layers_and_the_lm_head_once_per_prompt(
    model_dir: Path, cache_dir: Path
) -> None:
    shape = roofline.ModelShape.read(model_dir)
    lm_head = 49152 * 576
    one_token = shape.prefill_flops(1)
    assert one_token == 2 * shape.linear_params() + shape.attention_flops(1)  # a one-token prompt is a decode step
    # Two prompts of 36 tokens: 72 tokens through the layers, two LM-head rows, causal attention over 1..36.
    two = shape.prefill_flops(72, prompts=2)
    causal = 2 * shape.attention_flops(1) * 36 * 37 / 2
    assert two == pytest.approx(2 * (shape.linear_params() - lm_head) * 72 + 2 * 2 * lm_head + causal)
    seconds = roofline.prefill_seconds(model_dir, "float32", "int8", 72, 2, cache_dir=cache_dir)
    assert seconds == pytest.approx(two / (PEAK_GFLOP_S * 1e9))
    # The bf16 path is not measured where the CPU lacks it: no limit rather than a made-up one.
    if "bfloat16" not in roofline.gemm_kinds():
        assert roofline.prefill_seconds(model_dir, "bfloat16", "none", 72, 2, cache_dir=cache_dir) is None


def test_a_step_past_the_servers_int8_rows_is_limited_as_the_float_weights_it_runs(
    model_dir: Path, cache_dir: Path
) -> None:
    shape = roofline.ModelShape.read(model_dir)
    int8_bytes, float_bytes = shape.bytes_per_token("float32", "int8"), shape.bytes_per_token("float32")
    past = roofline.limits(model_dir, "float32", "int8", 32, cache_dir=cache_dir, int8_rows=8)
    assert past.weight_read_s == pytest.approx(float_bytes / (BANDWIDTH_GB_S * 1e9))
    every_call = roofline.limits(model_dir, "float32", "int8", 32, cache_dir=cache_dir, int8_rows=0)  # int8 always
    assert every_call.weight_read_s == pytest.approx(int8_bytes / (BANDWIDTH_GB_S * 1e9))
    within = roofline.limits(model_dir, "float32", "int8", 4, cache_dir=cache_dir, int8_rows=8)
    assert within.weight_read_s == every_call.weight_read_s


def test_the_table_leaves_out_a_dtype_whose_gemm_was_not_measured(
    model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch capped at AVX2 on a CPU with native bf16 measures no bf16 GEMM: its rows would show a bandwidth limit
    at 32 streams (tens of thousands of tok/s) where the GEMM bounds it."""
    monkeypatch.setattr(roofline, "gemm_kinds", lambda: ["float32", "int8-torch"])
    path = roofline.cache_path(cache_dir, roofline.ModelShape.read(model_dir), roofline.engine_threads())
    measured = json.loads(path.read_text())
    for kinds in (measured["peak_gflop_s"], measured["step_s"]):
        kinds.pop("bfloat16", None)
    measured["threads"] = roofline.engine_threads()
    path.write_text(json.dumps(measured))
    rows = roofline.table(model_dir, cache_dir, roofline.DEFAULT_CONTEXT).splitlines()
    assert any(line.startswith("| float32 | int8 |") for line in rows)
    assert not any(line.startswith("| bfloat16 |") for line in rows)
