"""``/openapi.json`` documents what we answer: every ``/v1`` and ``/admin/v1`` operation has a typed 200/201 body
and OpenAI's error shape for 4XX/5XX, and real answers of a gateway process (the instant fake engine) validate
against the schema their operation declares, with no key the schema leaves out."""

from __future__ import annotations

import copy
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from engine.settings import EngineSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.support import ADMIN_KEY, MODEL
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import create_tenant

API_PREFIXES = ("/v1/", "/admin/v1/")
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
TRAINING_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _app_schema() -> dict[str, Any]:
    settings = GatewaySettings(data_dir=Path("/nonexistent"), admin_key=ADMIN_KEY)
    return create_app(settings, EngineSettings()).openapi()


OPENAPI = _app_schema()
OPERATIONS = [
    (path, method)
    for path, operations in OPENAPI["paths"].items()
    if path.startswith(API_PREFIXES)
    for method in operations
]


def _closed(components: dict[str, Any]) -> dict[str, Any]:
    """The components with every object that lists its properties closed to others: an answer may not carry a
    key its schema does not document."""
    closed = copy.deepcopy(components)
    for schema in closed["schemas"].values():
        if "properties" in schema:
            schema.setdefault("additionalProperties", False)
    return closed


CLOSED_COMPONENTS = _closed(OPENAPI["components"])


def _untyped(schema: dict[str, Any]) -> bool:
    """``{}``, or an object of anything (what a ``dict[str, Any]`` return documents)."""
    return not schema or (schema.get("type") == "object" and "properties" not in schema and "$ref" not in schema)


@pytest.mark.parametrize(("path", "method"), OPERATIONS, ids=[f"{m.upper()} {p}" for p, m in OPERATIONS])
def test_every_api_operation_documents_its_body_and_errors(path: str, method: str) -> None:
    responses = OPENAPI["paths"][path][method]["responses"]
    success = responses.get("201", responses.get("200"))
    assert success is not None and success.get("content"), responses
    for media_type, body in success["content"].items():
        assert not _untyped(body.get("schema", {})), (media_type, body)
    for status in ("4XX", "5XX"):
        assert responses[status]["content"]["application/json"]["schema"] == ERROR_SCHEMA
    assert "422" not in responses  # validation errors are 400s in OpenAI's shape (the 4XX above)


def test_streamed_routes_document_their_event_stream() -> None:
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        content = OPENAPI["paths"][path]["post"]["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/event-stream"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(tmp_path_factory.mktemp("openapi")) as gateway:
        yield gateway.base


class Checked:
    """An HTTP client whose every answer must be a success that validates against its operation's schema."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.seen: set[tuple[str, str]] = set()

    def call(self, method: str, path: str, template: str | None = None, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code in (200, 201), (method, path, response.status_code, response.text)
        template = template or path
        declared = OPENAPI["paths"][template][method.lower()]["responses"][str(response.status_code)]
        schema = declared["content"]["application/json"]["schema"]
        body = response.json()
        Draft202012Validator({**schema, "components": CLOSED_COMPONENTS}).validate(body)
        self.seen.add((template, method.lower()))
        return body


@pytest.fixture(scope="module")
def tenant(gateway: str) -> Iterator[Checked]:
    with httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
        _, key = create_tenant(admin, "documented")
    with httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        yield Checked(http)


@pytest.fixture(scope="module")
def operator(gateway: str) -> Iterator[Checked]:
    with httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as http:
        yield Checked(http)


def test_inference_answers_match_their_schemas(tenant: Checked) -> None:
    assert [m["id"] for m in tenant.call("GET", "/v1/models")["data"]] == [MODEL]
    tenant.call("GET", f"/v1/models/{MODEL}", "/v1/models/{model}")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    tenant.call("POST", "/v1/chat/completions", json=chat)
    tenant.call("POST", "/v1/chat/completions", json={**chat, "n": 2, "logprobs": True, "top_logprobs": 2})
    prompt = {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 3}
    tenant.call("POST", "/v1/completions", json={**prompt, "logprobs": 2})
    tenant.call("POST", "/v1/completions", json={**prompt, "echo": True})
    deadline = time.monotonic() + 30  # the ledger is written behind the answers
    while not (by_model := tenant.call("GET", "/v1/usage", params={"group_by": "model"})["data"]):
        assert time.monotonic() < deadline, "no usage recorded"
        time.sleep(0.2)
    sums = {"requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "cost"}
    assert all(set(row) == {"model", "period_start", *sums} for row in by_model)  # only the columns it has
    tenant.call("GET", "/v1/usage", params={"group_by": "", "bucket": "none"})


def test_responses_answers_match_their_schemas(tenant: Checked) -> None:
    created = tenant.call("POST", "/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 16})
    path, template = f"/v1/responses/{created['id']}", "/v1/responses/{response_id}"
    tenant.call("GET", path, template)
    tenant.call("GET", f"{path}/input_items", template + "/input_items")
    tenant.call("DELETE", path, template)


def test_files_and_fine_tuning_answers_match_their_schemas(tenant: Checked) -> None:
    upload = {"file": ("train.jsonl", io.BytesIO(TRAINING_LINE * 4))}
    created = tenant.call("POST", "/v1/files", files=upload, data={"purpose": "fine-tune"})
    tenant.call("GET", "/v1/files", params={"limit": 1})
    tenant.call("GET", f"/v1/files/{created['id']}", "/v1/files/{file_id}")
    job = tenant.call("POST", "/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": created["id"]})
    tenant.call("GET", "/v1/fine_tuning/jobs")
    tenant.call("GET", f"/v1/fine_tuning/jobs/{job['id']}", "/v1/fine_tuning/jobs/{job_id}")
    tenant.call("GET", f"/v1/fine_tuning/jobs/{job['id']}/events", "/v1/fine_tuning/jobs/{job_id}/events")
    tenant.call("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", "/v1/fine_tuning/jobs/{job_id}/checkpoints")
    tenant.call("POST", f"/v1/fine_tuning/jobs/{job['id']}/cancel", "/v1/fine_tuning/jobs/{job_id}/cancel")
    tenant.call("DELETE", f"/v1/files/{created['id']}", "/v1/files/{file_id}")


def test_eval_answers_match_their_schemas(tenant: Checked) -> None:
    created = tenant.call(
        "POST",
        "/v1/evals",
        json={
            "name": "documented",
            "data_source_config": {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
            "testing_criteria": [
                {
                    "type": "string_check",
                    "name": "fox",
                    "input": "{{sample.output_text}}",
                    "reference": "The",
                    "operation": "like",
                }
            ],
            "metadata": {"team": "docs"},
        },
    )
    eval_path = f"/v1/evals/{created['id']}"
    tenant.call("GET", "/v1/evals")
    tenant.call("POST", eval_path, "/v1/evals/{eval_id}", json={"name": "renamed"})
    source = {
        "type": "completions",
        "model": MODEL,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "go"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 5},
        "source": {"type": "file_content", "content": [{"item": {"n": 1}}, {"item": {"n": 2}}]},
    }
    run = tenant.call("POST", f"{eval_path}/runs", "/v1/evals/{eval_id}/runs", json={"data_source": source})
    run_path, run_template = f"{eval_path}/runs/{run['id']}", "/v1/evals/{eval_id}/runs/{run_id}"
    deadline = time.monotonic() + 30
    while run["status"] in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.2)
        run = tenant.call("GET", run_path, run_template)
    assert run["status"] == "completed", run
    tenant.call("GET", f"{eval_path}/runs", "/v1/evals/{eval_id}/runs")
    items = tenant.call("GET", f"{run_path}/output_items", f"{run_template}/output_items")
    first = items["data"][0]["id"]
    tenant.call("GET", f"{run_path}/output_items/{first}", f"{run_template}/output_items/{{output_item_id}}")
    tenant.call("DELETE", run_path, run_template)
    tenant.call("DELETE", eval_path, "/v1/evals/{eval_id}")


def test_admin_answers_match_their_schemas(operator: Checked) -> None:
    created = operator.call("POST", "/admin/v1/tenants", json={"name": f"documented-{os.urandom(3).hex()}"})
    tenant_path, tenant_template = f"/admin/v1/tenants/{created['id']}", "/admin/v1/tenants/{tenant}"
    operator.call("GET", "/admin/v1/tenants")
    operator.call("GET", tenant_path, tenant_template)
    operator.call("PATCH", tenant_path, tenant_template, json={"requests_per_minute": 100})
    operator.call("POST", f"{tenant_path}/suspend", f"{tenant_template}/suspend")
    operator.call("POST", f"{tenant_path}/resume", f"{tenant_template}/resume")
    key = operator.call("POST", f"{tenant_path}/keys", f"{tenant_template}/keys", json={"name": "k"})
    operator.call("GET", f"{tenant_path}/keys", f"{tenant_template}/keys")
    operator.call("DELETE", f"{tenant_path}/keys/{key['id']}", f"{tenant_template}/keys/{{key_id}}")
    operator.call("GET", "/admin/v1/audit", params={"limit": 2})
    operator.call("GET", "/admin/v1/usage")
    operator.call("DELETE", tenant_path, tenant_template)
