"""``POST /v1/embeddings`` through the real gateway and its in-process vLLM pooling engine (all-MiniLM-L6-v2 from
its wheel, served beside the chat model by default), with the official client: every input form, base64 equal to
float, vectors equal to sentence-transformers' on the same model, OpenAI's refusals (dimensions on a model without
them, an input over the context, too many inputs, token ids out of the vocabulary, a model of the other kind),
usage and the ledger exact, and the tenant's limits and key restrictions applied. And in upstream mode: a bare
vLLM server of the model (pooling runner) behind a gateway answers the same vectors, metered the same."""

from __future__ import annotations

import base64
import math
import os
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from engine.model_prep import (
    ModelNotAvailableError,
    ModelPlan,
    embedding_model_plan,
    prepare_embedding_model,
    served_model_plans,
)
from engine.settings import DEFAULT_EMBEDDING_MODEL_ID, EngineSettings, ExtraModel
from engine.upstream.local_server import VLLMReplica
from engine.vllm_setup import gpu_memory_shares
from tests.support import MODEL, REPO
from tests.support.gateway_process import free_port, served_gateway
from tests.support.tenants import create_tenant, openai_client, tenant_key

EMBED = DEFAULT_EMBEDDING_MODEL_ID
DIMS = 384
SENTENCES = ["The cat sits on the mat.", "A dog runs in the park.", "Quantum computers use qubits."]


def test_which_models_the_process_serves(tmp_path: Path, model_dir: Path) -> None:
    cache = EngineSettings(data_dir=Path(os.environ.get("LLMAAS_TEST_MODEL_CACHE", REPO / ".data" / "test-cache")))
    default = embedding_model_plan(cache)
    assert default is not None and default.name == EMBED and default.runner == "pooling"
    assert (default.path / "config.json").is_file() and (default.path / "1_Pooling" / "config.json").is_file()
    assert embedding_model_plan(EngineSettings(data_dir=tmp_path, embedding_model="")) is None
    by_dir = embedding_model_plan(EngineSettings(data_dir=tmp_path, embedding_model=str(default.path)))
    assert by_dir == ModelPlan(default.path.name, default.path, "pooling")
    with pytest.raises(ModelNotAvailableError):
        embedding_model_plan(EngineSettings(data_dir=tmp_path, embedding_model=str(tmp_path)))
    extra = ExtraModel(name="second-chat", path=model_dir)
    settings = EngineSettings(data_dir=tmp_path, model_path=model_dir, embedding_model="", extra_models=[extra])
    assert [(plan.name, plan.runner, plan.primary) for plan in served_model_plans(settings)] == [
        (MODEL, "generate", True),
        ("second-chat", "auto", False),
    ]
    clash = EngineSettings(
        data_dir=tmp_path, model_path=model_dir, extra_models=[ExtraModel(name=MODEL, path=model_dir)]
    )
    with pytest.raises(ModelNotAvailableError, match="share the name"):
        served_model_plans(clash)


def test_every_engine_gets_its_share_of_one_gpu() -> None:
    chat, embed = ModelPlan("chat", Path("c"), "generate", True), ModelPlan("embed", Path("e"), "pooling")
    assert gpu_memory_shares([chat, embed], 0.9) == {"chat": pytest.approx(0.85), "embed": 0.05}
    assert gpu_memory_shares([chat], 0.9) == {"chat": 0.9}


@pytest.fixture(scope="module")
def encoder(server_data_dir: Path, server: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(server_data_dir / "models" / EMBED))


def vectors(reply: Any) -> list[list[float]]:
    assert [item.index for item in reply.data] == list(range(len(reply.data)))
    return [list(item.embedding) for item in reply.data]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_embedding_model_is_listed_beside_the_chat_model(client: openai.OpenAI) -> None:
    assert {MODEL, EMBED} <= {model.id for model in client.models.list()}
    assert client.models.retrieve(EMBED).id == EMBED


def test_every_input_form_gives_the_same_normalised_vectors(client: openai.OpenAI, encoder: Any) -> None:
    one = client.embeddings.create(model=EMBED, input=SENTENCES[0])
    assert one.model == EMBED and one.object == "list" and len(one.data) == 1
    assert len(one.data[0].embedding) == DIMS
    assert abs(sum(x * x for x in one.data[0].embedding) - 1) < 1e-4
    ids = [encoder(text)["input_ids"] for text in SENTENCES]
    assert one.usage.prompt_tokens == one.usage.total_tokens == len(ids[0])

    many = client.embeddings.create(model=EMBED, input=SENTENCES)
    assert many.usage.prompt_tokens == sum(map(len, ids))
    by_ids = client.embeddings.create(model=EMBED, input=ids[0])
    by_id_lists = client.embeddings.create(model=EMBED, input=ids)
    for got, want in zip(vectors(many), vectors(by_id_lists), strict=True):
        assert cosine(got, want) > 0.99999
    assert cosine(vectors(one)[0], vectors(many)[0]) > 0.99999
    assert cosine(vectors(by_ids)[0], vectors(many)[0]) > 0.99999
    assert cosine(vectors(many)[0], vectors(many)[2]) < 0.5  # different sentences, different vectors


def test_base64_is_the_float_vector_as_little_endian_float32(client: openai.OpenAI, http: httpx.Client) -> None:
    floats = client.embeddings.create(model=EMBED, input=SENTENCES, encoding_format="float")
    raw = http.post("/v1/embeddings", json={"model": EMBED, "input": SENTENCES, "encoding_format": "base64"}).json()
    for item, expected in zip(raw["data"], floats.data, strict=True):
        decoded = struct.unpack(f"<{DIMS}f", base64.b64decode(item["embedding"]))
        assert decoded == pytest.approx(expected.embedding, abs=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    decoded_by_sdk = client.embeddings.create(model=EMBED, input=SENTENCES)
    for got, want in zip(vectors(decoded_by_sdk), vectors(floats), strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_vectors_match_sentence_transformers(client: openai.OpenAI, server_data_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(server_data_dir / "models" / EMBED), device="cpu")
    expected = reference.encode(SENTENCES, normalize_embeddings=True).tolist()
    served = vectors(client.embeddings.create(model=EMBED, input=SENTENCES))
    assert all(cosine(got, want) > 0.999 for got, want in zip(served, expected, strict=True))


def refused(http: httpx.Client, body: dict[str, Any], path: str = "/v1/embeddings") -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_what_openai_refuses_is_refused_before_the_engine(http: httpx.Client, encoder: Any) -> None:
    assert refused(http, {"model": EMBED, "input": "hi", "dimensions": 128})["param"] == "dimensions"
    too_long = refused(http, {"model": EMBED, "input": "word " * 600})
    assert too_long["code"] == "context_length_exceeded" and too_long["param"] == "input"
    assert "maximum context length" in too_long["message"]
    past_chars = refused(http, {"model": EMBED, "input": ["ok", "x" * 100_000]})
    assert past_chars["code"] == "context_length_exceeded"
    assert refused(http, {"model": EMBED, "input": [101, 7592] * 400})["code"] == "context_length_exceeded"
    assert refused(http, {"model": EMBED, "input": ["a"] * 2049})["param"] == "input"
    assert refused(http, {"model": EMBED, "input": [[101, encoder.vocab_size]]})["param"] == "input"
    assert refused(http, {"model": EMBED, "input": [-1]})["param"] == "input"
    assert refused(http, {"model": EMBED, "input": ""})["param"] == "input"
    assert refused(http, {"model": EMBED, "input": ["a", ""]})["param"] == "input"
    assert refused(http, {"model": EMBED, "input": []})["param"] == "input"
    assert refused(http, {"model": EMBED, "input": "hi", "encoding_format": "int8"})["param"] == "encoding_format"
    assert refused(http, {"model": EMBED, "input": "hi", "truncate": True})["param"] == "truncate"
    chat_model = refused(http, {"model": MODEL, "input": "hi"})
    assert chat_model["param"] == "model" and "does not create embeddings" in chat_model["message"]
    chat = {"model": EMBED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert "embedding model" in refused(http, chat, "/v1/chat/completions")["message"]
    assert refused(http, {"model": EMBED, "prompt": "hi"}, "/v1/completions")["param"] == "model"
    assert http.post("/v1/embeddings", json={"model": "nope", "input": "hi"}).status_code == 404


def ledger(data_dir: Path, tenant_id: str, rows: int) -> list[tuple[str, int, int, str, str]]:
    """The tenant's usage records once ``rows`` are written (the ledger writes in batches)."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(data_dir / "llmaas.db") as db:
            found = db.execute(
                "SELECT client_request_id, prompt_tokens, completion_tokens, outcome, model FROM usage_records "
                "WHERE tenant_id = ? ORDER BY client_request_id",
                (tenant_id,),
            ).fetchall()
        if len(found) >= rows or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_usage_is_metered_exactly_per_tenant(server: str, admin: httpx.Client, server_data_dir: Path) -> None:
    tenant, key = create_tenant(admin, "embeddings-ledger")
    other, other_key = create_tenant(admin, "embeddings-other")
    client = openai_client(server, key)
    told = {}
    for i, batch in enumerate([SENTENCES[:1], SENTENCES, SENTENCES * 20]):
        reply = client.embeddings.create(
            model=EMBED, input=batch, user="u-1", extra_headers={"X-Client-Request-Id": f"emb-{i}"}
        )
        told[f"emb-{i}"] = reply.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError):  # refused before admission: no record
        client.embeddings.create(model=EMBED, input="hi", dimensions=8, extra_headers={"X-Client-Request-Id": "bad"})
    openai_client(server, other_key).embeddings.create(model=EMBED, input="theirs")
    rows = ledger(server_data_dir, tenant["id"], len(told))
    assert rows == [(request_id, tokens, 0, "completed", EMBED) for request_id, tokens in sorted(told.items())]
    assert len(ledger(server_data_dir, other["id"], 1)) == 1


def test_limits_budgets_and_key_restrictions_apply(server: str, admin: httpx.Client) -> None:
    _, key = create_tenant(admin, "embeddings-tpm", tokens_per_minute=20)
    client = openai_client(server, key)
    client.embeddings.create(model=EMBED, input="a few words")  # 5 tokens
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model=EMBED, input=SENTENCES * 3)
    _, budget_key = create_tenant(admin, "embeddings-budget", monthly_token_budget=10)
    with pytest.raises(openai.RateLimitError):
        openai_client(server, budget_key).embeddings.create(model=EMBED, input=SENTENCES)
    _, chat_only = create_tenant(admin, "embeddings-chat-only", key={"allowed_models": [MODEL]})
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(server, chat_only).embeddings.create(model=EMBED, input="hi")


# -- upstream mode: a bare vLLM server of the embedding model behind a gateway ---------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, VLLMReplica, Path]]:
    """A vLLM OpenAI server of the embedding model (pooling runner) and a gateway in upstream mode in front of
    it; yields the gateway's base URL, the replica and the gateway's data dir."""
    tmp_path = tmp_path_factory.mktemp("embeddings-upstream")
    cache = Path(os.environ.get("LLMAAS_TEST_MODEL_CACHE", REPO / ".data" / "test-cache"))
    model_dir = prepare_embedding_model(EngineSettings(data_dir=cache))
    replica = VLLMReplica(free_port(), 0, tmp_path / "vllm.log", EMBED, runner="pooling")
    try:
        replica.start(model_dir)
        replica.wait_ready()
        settings: dict[str, Any] = {
            "engine": "upstream",
            "upstream_urls": replica.url,
            "upstream_scrape_interval_seconds": 0.5,
            "embedded_worker": "false",
            "log_level": "warning",
        }
        with served_gateway(tmp_path / "data", log=tmp_path / "gateway.log", **settings) as gateway:
            yield gateway.base, replica, tmp_path / "data"
    finally:
        replica.stop()


@pytest.mark.slow  # a vLLM pooling server of its own (about 50 s): `make test-slow`
def test_upstream_mode_routes_embeddings_to_the_pooling_server(
    upstream: tuple[str, VLLMReplica, Path], client: openai.OpenAI
) -> None:
    base, replica, data_dir = upstream
    tenant_id, key = tenant_key(base, "embeddings-upstream")
    through = openai_client(base, key)
    assert [model.id for model in through.models.list()] == [EMBED]
    reply = through.embeddings.create(model=EMBED, input=SENTENCES, extra_headers={"X-Client-Request-Id": "up-1"})
    in_process = client.embeddings.create(model=EMBED, input=SENTENCES)
    assert reply.usage.prompt_tokens == in_process.usage.prompt_tokens
    for got, want in zip(vectors(reply), vectors(in_process), strict=True):
        assert cosine(got, want) > 0.9999
    assert replica.successes() >= 1  # the server itself answered it
    with pytest.raises(openai.BadRequestError) as refused_dimensions:
        through.embeddings.create(model=EMBED, input="hi", dimensions=8)
    assert refused_dimensions.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        through.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    rows = ledger(data_dir, tenant_id, 1)
    assert rows == [("up-1", reply.usage.prompt_tokens, 0, "completed", EMBED)]
