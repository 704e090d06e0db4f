"""Every model has a price, by one rule (``gateway.accounting.pricing``): the rule's precedence on its own, then
through the real gateway (in process, with the instant fake engine) on SQLite and PostgreSQL, with the in-process
and the Redis limiter: ``ft:`` models and their checkpoints cost what their base model costs the tenant, the
server's default list prices what a tenant's own list does not, a spent cost budget refuses fine-tuned models too,
fine-tuning jobs and eval samples are priced by the same rule, and the operator's console names what is free."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from adapters.jobs import JobService
from adapters.registry import AdapterRegistry, checkpoint_name, lineage, model_name
from adapters.store import FineTuningJob
from gateway.accounting.pricing import UNPRICED, Price, PriceBook
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.accounting.training_billing import job_charger
from gateway.db import Database, UsageRecord
from gateway.db.database import sqlite_url
from gateway.settings import GatewaySettings
from gateway.tenancy.models import ModelPrice, TenantCreate, usd_to_nanos
from gateway.tenancy.service import TenancyService, utcnow
from tests.finetune_data import pirate_jsonl
from tests.support import ADMIN_KEY
from tests.support.databases import REDIS_URL, fresh_postgres_database
from tests.support.evals import make_eval
from tests.support.in_process import InProcessGateway, in_process_gateway
from tests.test_worker import job_request

BASE = "fake"


def price(input: str, output: str, training: str | None = None) -> ModelPrice:
    return ModelPrice(
        input=Decimal(input), output=Decimal(output), training=None if training is None else Decimal(training)
    )


# -- the rule -----------------------------------------------------------------------------------------------------
FT = model_name("org/base:v1", "acme", "pirate", "ftjob-0123456789abcdef")
CKPT = checkpoint_name(FT, 7)


def test_a_names_lineage_leads_back_to_its_base_model() -> None:
    assert FT == "ft:org/base:v1:acme:pirate:01234567"
    assert lineage(FT) == [FT, "org/base:v1"]  # a base model's id may hold a ':'
    assert lineage(CKPT) == [CKPT, FT, "org/base:v1"]
    assert lineage(model_name("m", "acme", None, "ftjob-ab")) == ["ft:m:acme::ab", "m"]
    assert lineage("org/base:v1") == ["org/base:v1"]
    assert lineage("ft:nonsense") == ["ft:nonsense"]


def test_the_tenants_price_for_the_concrete_model_comes_first() -> None:
    book = PriceBook({FT: price("9", "9"), "org/base:v1": price("8", "8")})
    tenant = {FT: price("3", "4"), "org/base:v1": price("1", "2")}
    assert book.price_for(tenant, FT, "inference") == Price(Decimal(3), Decimal(4), Decimal(3) / 2)
    assert book.price_for(tenant, CKPT, "inference") == Price(
        Decimal(3), Decimal(4), Decimal(3) / 2
    )  # its fine-tuned model's
    assert book.price_for(tenant, "org/base:v1", "inference") == Price(Decimal(1), Decimal(2), Decimal(1) / 2)


def test_an_ft_model_and_its_checkpoint_cost_their_base_models_price() -> None:
    book = PriceBook({})
    tenant = {"org/base:v1": price("1", "2")}
    for model in (FT, CKPT):
        assert book.price_for(tenant, model, "inference") == Price(Decimal(1), Decimal(2), Decimal(1) / 2)


def test_the_servers_default_list_prices_what_the_tenants_list_does_not() -> None:
    book = PriceBook({"org/base:v1": price("5", "6"), "other": price("7", "7")})
    assert book.price_for({}, CKPT, "inference") == Price(Decimal(5), Decimal(6), Decimal(5) / 2)
    tenant = {"org/base:v1": price("1", "2")}
    assert book.price_for(tenant, FT, "inference") == Price(
        Decimal(1), Decimal(2), Decimal(1) / 2
    )  # the tenant's base wins
    assert book.price_for(tenant, "other", "inference") == Price(Decimal(7), Decimal(7), Decimal(7) / 2)


def test_training_costs_the_training_price_else_the_input_price() -> None:
    book = PriceBook({"priced": price("1", "2", training="3")})
    assert book.price_for({}, "priced", "training") == Price(Decimal(3), Decimal(0), Decimal(3))
    assert book.price_for({"priced": price("4", "5")}, "priced", "training") == Price(
        Decimal(4), Decimal(0), Decimal(4)
    )
    assert book.price_for({}, model_name("priced", "a", None, "ftjob-1"), "training") == Price(
        Decimal(3), Decimal(0), Decimal(3)
    )


def test_an_unpriced_model_costs_0_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook({})
    with caplog.at_level(logging.WARNING, logger="gateway.accounting.pricing"):
        assert book.price_for({}, FT, "inference") == UNPRICED
        assert book.price_for({}, CKPT, "training") == UNPRICED
    assert UNPRICED.cost_nanos(1000, 1000) == 0 and not UNPRICED.priced
    assert [r.getMessage() for r in caplog.records] == [
        "model org/base:v1 has no price (neither the tenant's nor LLMAAS_DEFAULT_MODEL_PRICES): billed 0"
    ]  # once, and naming the base model, never a tenant's ft: name
    assert book.unpriced({}, ["org/base:v1", "x"]) == ["org/base:v1", "x"]
    assert book.unpriced({"x": price("0", "0")}, ["org/base:v1", "x"]) == ["org/base:v1"]  # priced at 0 is a price


def test_a_cost_is_in_nanos_rounded_up() -> None:
    assert Price(Decimal("0.15"), Decimal("0.6"), Decimal("0.075")).cost_nanos(1, 1) == 750  # 0.15 + 0.6 micro-USD
    assert Price(Decimal("0.0000001"), Decimal(0), Decimal(0)).cost_nanos(1, 0) == 1


def test_the_default_list_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMAAS_DEFAULT_MODEL_PRICES", '{"m": {"input": "0.1", "output": 0.2, "training": "1"}}')
    assert GatewaySettings().default_model_prices == {"m": price("0.1", "0.2", training="1")}
    monkeypatch.setenv("LLMAAS_DEFAULT_MODEL_PRICES", '{"m": {"input": "-1", "output": "0"}}')
    with pytest.raises(ValidationError, match="input"):
        GatewaySettings()


# -- through the gateway ------------------------------------------------------------------------------------------
@dataclass
class Gateway(InProcessGateway):
    database: Database
    registry: AdapterRegistry

    def fine_tuned(self, tenant_id: str, tenant_name: str) -> tuple[str, str]:
        """A fine-tuned model of the tenant's, and one of its checkpoints, as the worker registers them."""
        job_id = f"ftjob-{uuid.uuid4().hex}"
        name = model_name(BASE, tenant_name, "pirate", job_id)
        checkpoint = checkpoint_name(name, 3)
        with self.database.sessions.begin() as session:
            for adapter in (name, checkpoint):
                self.registry.register(
                    session,
                    name=adapter,
                    tenant_id=tenant_id,
                    base_model=BASE,
                    job_id=job_id,
                    adapter_dir=self.registry.job_dir(job_id) / adapter.rpartition(":")[2],
                )
        return name, checkpoint

    def ledger(self, tenant_id: str, count: int) -> list[UsageRecord]:
        """The tenant's ledger records, once ``count`` of them are written."""
        deadline = time.monotonic() + 15
        while True:
            with self.database.sessions() as session:
                rows = list(
                    session.scalars(
                        select(UsageRecord).where(UsageRecord.tenant_id == tenant_id).order_by(UsageRecord.created_at)
                    )
                )
            if len(rows) >= count or time.monotonic() > deadline:
                assert len(rows) == count
                return rows
            time.sleep(0.05)


@pytest.fixture(params=["sqlite+memory", "sqlite+redis", "postgresql+memory", "postgresql+redis"])
def gateways(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start gateways on this database and limiter: ``gateways(default_model_prices)``."""
    database_kind, limiter = request.param.split("+")
    with ExitStack() as stack:
        url = stack.enter_context(fresh_postgres_database("llmaas_pricing")) if database_kind == "postgresql" else None

        def start(default_model_prices: dict[str, ModelPrice] | None = None) -> Gateway:
            started = stack.enter_context(
                in_process_gateway(
                    tmp_path,
                    model=BASE,
                    database_url=url,
                    redis_url=REDIS_URL if limiter == "redis" else None,
                    meter_flush_interval_seconds=0.05,
                    default_model_prices=default_model_prices or {},
                )
            )
            database = Database(url or sqlite_url(tmp_path))
            stack.callback(database.dispose)
            registry = AdapterRegistry(database.sessions, tmp_path / "adapters")
            return Gateway(started.app, started.http, database, registry)

        yield start


def chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def test_ft_models_and_checkpoints_are_billed_at_the_base_models_tenant_price(
    gateways: Callable[..., Gateway],
) -> None:
    gateway = gateways({BASE: price("100", "100")})  # the tenant's own price comes first
    tenant_id, tenant_name, client = gateway.tenant(model_prices={BASE: price("1", "2")})
    models = [BASE, *gateway.fine_tuned(tenant_id, tenant_name)]
    replies = [chat(client, model) for model in models]
    records = gateway.ledger(tenant_id, 3)
    assert [r.model for r in records] == models
    for reply, record in zip(replies, records, strict=True):
        expected = Price(Decimal(1), Decimal(2), Decimal(1) / 2).cost_nanos(
            reply.usage.prompt_tokens, reply.usage.completion_tokens
        )
        assert expected > 0 and usd_to_nanos(record.cost) == expected


def test_the_servers_default_price_applies_when_the_tenant_has_none(gateways: Callable[..., Gateway]) -> None:
    gateway = gateways({BASE: price("3", "5")})
    tenant_id, tenant_name, client = gateway.tenant()
    ft, checkpoint = gateway.fine_tuned(tenant_id, tenant_name)
    replies = [chat(client, model) for model in (BASE, ft, checkpoint)]
    records = gateway.ledger(tenant_id, 3)
    for reply, record in zip(replies, records, strict=True):
        expected = Price(Decimal(3), Decimal(5), Decimal(3) / 2).cost_nanos(
            reply.usage.prompt_tokens, reply.usage.completion_tokens
        )
        assert expected > 0 and usd_to_nanos(record.cost) == expected


def test_a_spent_cost_budget_refuses_the_ft_model_and_its_checkpoint_too(gateways: Callable[..., Gateway]) -> None:
    gateway = gateways()
    tenant_id, tenant_name, client = gateway.tenant(
        monthly_cost_budget=Decimal("0.001"), model_prices={BASE: price("1", "1")}
    )
    ft, checkpoint = gateway.fine_tuned(tenant_id, tenant_name)
    spent = UsageEntry(
        f"req_{uuid.uuid4().hex}", tenant_id, None, BASE, "inference", "completed", 0, 0, 10**6, utcnow()
    )
    UsageLedger(gateway.database).write([spent])  # the whole budget, before the limiter first reads it
    for model in (BASE, ft, checkpoint):
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client, model)
        assert refused.value.code == "insufficient_quota", model


def upload_training_file(client: openai.OpenAI) -> str:
    return client.files.create(file=("train.jsonl", io.BytesIO(pirate_jsonl())), purpose="fine-tune").id


def test_a_fine_tuning_job_reserves_its_cost_by_the_same_rule(gateways: Callable[..., Gateway]) -> None:
    gateway = gateways({BASE: price("1", "1", training="7")})
    _, _, client = gateway.tenant()
    job = client.fine_tuning.jobs.create(model=BASE, training_file=upload_training_file(client))
    with gateway.database.sessions() as session:
        row = session.get(FineTuningJob, job.id)
        assert row is not None
        assert row.estimated_tokens > 0
        assert row.reserved_cost_nanos == Price(Decimal(7), Decimal(0), Decimal(7)).cost_nanos(row.estimated_tokens, 0)
    client.fine_tuning.jobs.cancel(job.id)


def test_a_spent_cost_budget_refuses_a_fine_tuning_job_priced_by_the_default_list(
    gateways: Callable[..., Gateway],
) -> None:
    gateway = gateways({BASE: price("1", "1")})
    _, _, client = gateway.tenant(monthly_cost_budget=Decimal("0.000001"))
    file_id = upload_training_file(client)
    with pytest.raises(openai.RateLimitError) as refused:
        client.fine_tuning.jobs.create(model=BASE, training_file=file_id)
    assert refused.value.code == "insufficient_quota"


def test_eval_samples_on_an_ft_model_are_priced_like_its_base(gateways: Callable[..., Gateway]) -> None:
    gateway = gateways({BASE: price("2", "3")})
    tenant_id, tenant_name, client = gateway.tenant()
    ft, _ = gateway.fine_tuned(tenant_id, tenant_name)
    created = make_eval(client)
    items = [{"item": {"question": "q1", "expected": "The quick"}}, {"item": {"question": "q2", "expected": "x"}}]
    client.evals.runs.create(
        created.id,
        data_source={  # type: ignore[arg-type]
            "type": "completions",
            "model": ft,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
            "sampling_params": {"max_completion_tokens": 5},
            "source": {"type": "file_content", "content": items},
        },
    )
    records = gateway.ledger(tenant_id, 2)
    for record in records:
        assert (record.model, record.kind) == (ft, "eval")
        expected = Price(Decimal(2), Decimal(3), Decimal(2) / 2).cost_nanos(
            record.prompt_tokens, record.completion_tokens
        )
        assert expected > 0 and usd_to_nanos(record.cost) == expected


def test_training_is_charged_by_the_same_rule(database: Database) -> None:
    tenancy = TenancyService(database)
    tenant = tenancy.create_tenant(TenantCreate(name="acme", model_prices={"base": price("1", "2", training="4")}))
    other = tenancy.create_tenant(TenantCreate(name="other"))
    jobs = JobService(database.sessions, on_final=job_charger(PriceBook({"base": price("9", "9")})))
    charged = {}
    for owner in (tenant.id, other.id):
        job_id = jobs.create(job_request(tenant_id=owner, model="base")).id
        with database.sessions.begin() as session:
            session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(trained_tokens=1000))
        jobs.cancel(owner, job_id)  # final: charged for the tokens trained
        with database.sessions() as session:
            record = session.scalar(select(UsageRecord).where(UsageRecord.request_id == job_id))
            assert record is not None and record.kind == "fine_tune"
            charged[owner] = usd_to_nanos(record.cost)
    assert charged == {tenant.id: 4 * 1000 * 1000, other.id: 9 * 1000 * 1000}  # the tenant's, else the default


def test_the_operators_tenants_page_names_models_billed_0(gateways: Callable[..., Gateway]) -> None:
    gateway = gateways()
    _, free, _ = gateway.tenant()
    _, priced, _ = gateway.tenant(model_prices={BASE: price("1", "1")})
    signed_in = gateway.http.post(
        "/console/login",
        data={"key": ADMIN_KEY},
        headers={"origin": "http://testserver", "sec-fetch-site": "same-origin"},
        follow_redirects=False,
    )
    assert signed_in.status_code in (302, 303), signed_in.text
    page = gateway.http.get("/console/admin/tenants")
    assert page.status_code == 200
    warning = page.text.split('id="unpriced"', 1)[1].split("</section>", 1)[0]
    assert f"model <code>{BASE}</code> has no price: billed 0 for {free}" in warning
    assert priced not in warning
