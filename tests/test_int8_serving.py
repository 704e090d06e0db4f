"""int8 weights (``LLMAAS_QUANTIZATION=int8``: our ``llmaas_int8`` vLLM method) served end to end: one gateway on
the real SmolLM2 with fp32 activations and int8 weights, through the official client: sensible greedy answers close
to the fp32 session server's, logprobs and exact usage, the quantization shown in ``/ready``, and LoRA adapters on
the quantized base, alone and in a mixed batch with the base. The layer method itself (weight-only and w8a8, the
LM head tied to the embedding, the refusal to start without kernels) is checked on plain modules, without vLLM's
engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from bench.lora_kernels import make_adapters
from engine.hardware import detect
from engine.kernels import int8, int8_method
from engine.kernels.int8_config import KernelsUnavailableError, LLMaaSInt8Config
from engine.settings import EngineSettings
from engine.vllm_setup import resolve_quantization
from tests.support import MODEL
from tests.support.gateway_process import second_model_gateway
from tests.support.tenants import openai_client, register_adapter, tenant_key

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow.", "What is 2 plus 2?"]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="GPU host: the int8 kernels are for CPUs")


def ask(client: openai.OpenAI, question: str, model: str = MODEL, max_tokens: int = 16) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def int8_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``llmaas serve`` with int8 weights (fp32 activations); its base URL and data dir."""
    data_dir = tmp_path_factory.mktemp("int8-gateway")
    # int8 for every call (no float GEMM above LLMAAS_INT8_MAX_ROWS rows): a decode step that vLLM batches with
    # another request's prefill would otherwise run on the float weights, and the batch tests below compare greedy
    # answers exactly.
    with second_model_gateway(data_dir, model_dir, quantization="int8", int8_max_rows=0) as gateway:
        yield gateway.base, data_dir


@pytest.fixture(scope="module")
def tenant(int8_server: tuple[str, Path]) -> tuple[str, openai.OpenAI]:
    base, _ = int8_server
    tenant_id, key = tenant_key(base, "int8")
    return tenant_id, openai_client(base, key)


def test_ready_shows_the_quantization(int8_server: tuple[str, Path]) -> None:
    engines = httpx.get(f"{int8_server[0]}/ready", timeout=10).json()["engines"]
    assert engines[MODEL]["quantization"] == "int8"
    assert engines[MODEL]["int8_max_rows"] == "0"
    assert engines[MODEL]["dtype"] == "float32"


def test_greedy_answers_are_sensible_and_close_to_fp32(
    tenant: tuple[str, openai.OpenAI], client: openai.OpenAI, hf_tokenizer: Any
) -> None:
    int8_client = tenant[1]
    assert "Paris" in ask(int8_client, PROMPTS[0])
    shared = 0
    for prompt in PROMPTS:
        ours = hf_tokenizer.encode(ask(int8_client, prompt), add_special_tokens=False)
        theirs = hf_tokenizer.encode(ask(client, prompt), add_special_tokens=False)
        shared += next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
        )
    # int8 weights move logits by a little: the greedy answers start the same (most of the 3 x 16 tokens agree).
    assert shared >= 24, shared


def test_logprobs_and_exact_usage(tenant: tuple[str, openai.OpenAI], hf_tokenizer: Any) -> None:
    reply = tenant[1].chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
    )
    choice = reply.choices[0]
    assert reply.usage is not None and choice.logprobs is not None and choice.logprobs.content is not None
    rendered = hf_tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(hf_tokenizer.encode(rendered, add_special_tokens=False))
    assert reply.usage.completion_tokens == len(choice.logprobs.content)
    for token in choice.logprobs.content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].logprob >= token.top_logprobs[1].logprob


def test_adapters_on_the_int8_base_alone_and_in_a_mixed_batch(
    int8_server: tuple[str, Path], tenant: tuple[str, openai.OpenAI], model_dir: Path
) -> None:
    _, data_dir = int8_server
    tenant_id, int8_client = tenant
    # Random adapters strong enough to change the answers (at make_adapters' default they rarely do).
    sources = make_adapters(model_dir, data_dir / "random-adapters", strength=0.5, count=2)
    models = [MODEL, *(register_adapter(data_dir, tenant_id, source) for source in sources)]
    alone = {(model, prompt): ask(int8_client, prompt, model) for model in models for prompt in PROMPTS[:2]}
    answers = {model: [alone[model, prompt] for prompt in PROMPTS[:2]] for model in models}
    assert len({tuple(each) for each in answers.values()}) == len(models), answers  # each adapter's delta applies
    # Two at a time: our kernels sum a row the same way whether it is alone or one of two.
    pairs = [[(models[1], PROMPTS[0]), (models[2], PROMPTS[0])], [(models[0], PROMPTS[1]), (models[1], PROMPTS[1])]]
    for pair in pairs:
        with ThreadPoolExecutor(len(pair)) as pool:
            together = list(pool.map(lambda job: ask(int8_client, job[1], job[0]), pair))
        assert together == [alone[job] for job in pair]


class Layer(torch.nn.Module):
    """What vLLM's linear layers and LM head hold for a quantization method: the loaded float weight."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)


@pytest.mark.parametrize(("mode", "tolerance"), [("int8", 0.02), ("w8a8", 0.05)])
def test_the_layer_method_computes_the_float_linear_closely(
    mode: str, tolerance: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMAAS_QUANTIZATION", mode)
    config = LLMaaSInt8Config()
    assert config.dynamic_activations == (mode == "w8a8")
    torch.manual_seed(0)
    weight, bias, x = torch.randn(96, 64), torch.randn(96), torch.randn(5, 64)
    layer = Layer(weight)
    method = int8_method.Int8LinearMethod(config.dynamic_activations)
    method.process_weights_after_loading(layer)
    assert layer.weight.numel() == 0 and layer.int8_weight.dtype == torch.int8  # the float copy is freed
    expected = torch.nn.functional.linear(x, weight, bias)
    got = method.apply(layer, x, bias)
    assert got.dtype == x.dtype and got.shape == expected.shape
    assert (got - expected).norm() / expected.norm() < tolerance


def test_decode_sized_calls_read_the_int8_weights_and_bigger_ones_the_float_gemm() -> None:
    torch.manual_seed(1)
    weight, bias = torch.randn(96, 64), torch.randn(96)
    layer = Layer(weight)
    method = int8_method.Int8LinearMethod(False, max_rows=4)
    method.process_weights_after_loading(layer)
    small, big = torch.randn(4, 64), torch.randn(9, 64)
    int8_small = int8_method.int8.int8_linear(small, layer.int8_weight, layer.int8_scales, bias)
    assert torch.equal(method.apply(layer, small, bias), int8_small)
    float_big = torch.nn.functional.linear(big, weight, bias)
    assert torch.allclose(method.apply(layer, big, bias), float_big, atol=1e-4, rtol=1e-4)
    int8_big = int8_method.int8.int8_linear(big, layer.int8_weight, layer.int8_scales, bias)
    assert not torch.allclose(int8_big, float_big, atol=1e-4, rtol=1e-4)  # so the float path is what ran


def test_unset_max_rows_go_by_the_activation_dtype_where_our_kernels_stop_winning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLMAAS_INT8_MAX_ROWS", raising=False)  # a bare `vllm serve`: each layer by its weights
    assert LLMaaSInt8Config().max_rows is None
    # bf16 rows: 24 where our kernels take bf16 dot products against a float GEMM without AMX, else 8 (w8a8: 8)
    monkeypatch.setattr(int8, "detect", lambda: dataclasses.replace(detect(), amx=False))
    for path, bf16_rows in (("avx512_vnni", 8), ("avx512_bf16", 24)):
        monkeypatch.setattr(int8, "_default", path)
        for dtype, dynamic, rows in (
            (torch.float32, False, 64), (torch.bfloat16, False, bf16_rows), (torch.bfloat16, True, 8)
        ):  # fmt: skip
            method = int8_method.Int8LinearMethod(dynamic, max_rows=None)
            method.process_weights_after_loading(Layer(torch.randn(96, 64, dtype=dtype)))
            assert method.max_rows == rows
        assert EngineSettings().int8_rows("bfloat16", int8.bf16_dot_products_lead()) == bf16_rows
    assert EngineSettings().int8_rows("float32") == 64 and EngineSettings().int8_rows("bfloat16") == 8
    monkeypatch.setenv("LLMAAS_INT8_MAX_ROWS", "0")  # set: for every dtype
    assert EngineSettings().int8_rows("float32") == 0 and LLMaaSInt8Config().max_rows == 0


def test_bf16_dot_products_lead_on_the_avx512_bf16_path_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    for path, amx, lead in (("avx512_bf16", False, True), ("avx512_bf16", True, False), ("avx512_vnni", False, False)):
        monkeypatch.setattr(int8, "_default", path)
        monkeypatch.setattr(int8, "detect", lambda amx=amx: dataclasses.replace(detect(), amx=amx))
        assert int8.bf16_dot_products_lead() is lead
        assert not int8.bf16_dot_products_lead(dynamic_activations=True)  # w8a8 quantizes bf16 x: no dot products


def test_a_tied_lm_head_gets_an_int8_copy_and_the_embedding_keeps_its_floats() -> None:
    embedding = Layer(torch.randn(128, 32))
    head = Layer(torch.empty(128, 32))
    method = int8_method.Int8LinearMethod(False, lm_head=True)
    method.tie_weights(head, embedding)
    method.process_weights_after_loading(head)
    assert embedding.weight.dtype == torch.float32 and embedding.weight.shape == (128, 32)
    hidden = torch.randn(3, 32)
    logits = method.apply(head, hidden)
    expected = hidden @ embedding.weight.T
    assert (logits - expected).norm() / expected.norm() < 0.02


def test_no_kernels_no_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8_method, "_checked", False)
    monkeypatch.setattr(int8_method.int8, "available", lambda: False)
    with pytest.raises(KernelsUnavailableError, match="LLMAAS_QUANTIZATION=none"):
        int8_method.Int8LinearMethod(False)


def test_auto_serves_int8_on_the_cpu_and_float_on_a_gpu() -> None:
    assert EngineSettings().quantization == "auto"
    assert resolve_quantization("auto", gpu=False) == "int8"  # the kernels build here: this module's tests use them
    assert resolve_quantization("auto", gpu=True) == "none"
    assert resolve_quantization("w8a8", gpu=False) == "w8a8" and resolve_quantization("none", gpu=False) == "none"
