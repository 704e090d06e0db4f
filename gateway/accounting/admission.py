"""Admission: the one server-owned object through which every billable thing a tenant asks for is let in, and
through which what it used is settled.

* An inference request reserves its rate (one RPM unit per prompt, prompt + most completion tokens in the TPM
  window, a concurrency slot) and its budget (those tokens and their cost at the price ``pricing`` finds for its
  model, which its settlement charges too), and room for its ledger record.
  The returned ``InferenceReservation`` settles exactly once when the run ends (completed, failed or
  abandoned), charged by the one rule of ``charges``: the ledger gets one record (durable, ``durable``, before
  the answer's last bytes go), and the limiter replaces the reservation by the charged count.
* An upload, and the creation of an eval, an eval run or a fine-tuning job, takes one unit of the RPM window
  (a job also reserves budget: below).
* A batch's request (ledger kind ``batch``) is admitted as an inference request against the monthly budgets
  only (its batch runner's concurrency paces it, never the tenant's RPM, TPM or slots), at the batch price.
* A fine-tuning job reserves budget only (never a slot or the TPM window); it is charged in the transaction
  that moves the job to its final status, and its reservation is released by ``training_billing``.
* A key with budgets of its own (``KeyIdentity.key_budgets``) has an inference request's (and a batch request's)
  budget part reserved against them too, first, in the same limiter under the key's id, and settled with the
  tenant's: whichever budget is spent refuses the request before the model runs. Fine-tuning jobs are the
  tenant's (their ledger records name no key).

A draining gateway (``stop_admitting``, on SIGTERM) refuses whatever is new with a 503 and ``retry-after``;
requests it has to cut at the drain's deadline (``interrupt``) are charged as failures of ours.

Everything is keyed by ids the server minted (the request's context id, the job id), never a client value."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from gateway.accounting.charges import charged_tokens
from gateway.accounting.ledger import LedgerWriter
from gateway.accounting.limits import (
    BudgetDemand,
    BudgetSnapshot,
    Demand,
    Limiter,
    MonthToDate,
    RateDemand,
    Settlement,
)
from gateway.accounting.pricing import Price, PriceBook
from gateway.accounting.records import UsageEntry, UsageLedger
from gateway.accounting.tasks import SettlementTasks
from gateway.clock import utcnow
from gateway.context import RequestContext
from gateway.errors import ServiceUnavailable
from gateway.tenancy.principal import TenantPrincipal

logger = logging.getLogger(__name__)
_SETTLE_ATTEMPTS = 3
BATCH_KIND = "batch"
"""The ledger kind of a batch's requests: budget-only admission, at the batch price."""


def current_month() -> str:
    return utcnow().strftime("%Y-%m")


class Draining(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "This server is shutting down and takes no new requests; retry (another server will answer).",
            code="server_draining",
            headers={"retry-after": "1"},
        )


class Admission:
    def __init__(
        self,
        limiter: Limiter,
        ledger: LedgerWriter,
        usage: UsageLedger,
        tasks: SettlementTasks,
        prices: PriceBook,
        *,
        training_lease_seconds: float,
    ) -> None:
        self._limiter = limiter
        self._prices = prices
        self._ledger = ledger
        self._usage = usage
        self._tasks = tasks
        self._training_lease = training_lease_seconds
        self._running: dict[str, tuple[str, Demand]] = {}  # demand id -> (tenant id, demand), until settled
        self._running_keys: dict[str, tuple[str, Demand]] = {}  # the same, held against a key's own budgets
        self.draining = False
        self._interrupted = False

    def stop_admitting(self) -> None:
        """From now on, refuse everything new (a 503 with ``retry-after``): the gateway is draining."""
        self.draining = True

    def interrupt(self) -> None:
        """The requests still running are about to be cut by us: charge them as our failures, not the client's."""
        self._interrupted = True

    @property
    def in_flight(self) -> int:
        """Admitted inference requests not settled yet."""
        return len(self._running)

    def _check_open(self) -> None:
        if self.draining:
            raise Draining()

    def _month_to_date(self, tenant_id: str, key_id: str | None = None) -> MonthToDate:
        """Reads the tenant's month so far (``key_id``: that key's, for its own budgets)."""

        async def read(month: str) -> BudgetSnapshot:
            if key_id is not None:
                return await run_in_threadpool(self._usage.key_budget_snapshot, tenant_id, key_id, month)
            return await run_in_threadpool(self._usage.budget_snapshot, tenant_id, month)

        return read

    async def _admit_key_budget(self, tenant: TenantPrincipal, demand: Demand) -> Demand | None:
        """Reserve the demand's budget part against the key's own budgets, if it has any (the limiter keeps them
        under the key's id, as it keeps a tenant's under the tenant's); the reservation, or None."""
        budgets = tenant.identity.key_budgets
        if demand.budget is None or not budgets.has_budget:
            return None
        held = Demand(demand.id, budget=demand.budget)
        await self._limiter.admit(tenant.key_id, budgets, held, self._month_to_date(tenant.tenant_id, tenant.key_id))
        return held

    async def rate_headers(self, context: RequestContext, tenant: TenantPrincipal) -> None:
        """Put the tenant's current rate-limit headers on the response."""
        context.response_headers.update(await self._limiter.headers(tenant.tenant_id, tenant.identity.quotas))

    async def admit_inference(
        self,
        context: RequestContext,
        tenant: TenantPrincipal,
        model: str,
        *,
        prompts: int,
        prompt_tokens: int,
        max_completion_tokens: int,
        end_user: str | None,
        kind: str = "inference",
    ) -> InferenceReservation:
        quotas = tenant.identity.quotas
        batch = kind == BATCH_KIND
        price = self._prices.price_for(quotas.prices, model, "batch" if batch else "inference")
        tokens = prompt_tokens + max_completion_tokens
        demand = Demand(
            context.id,
            rate=None if batch else RateDemand(requests=prompts, tokens=tokens, slot=True),
            budget=BudgetDemand(tokens, price.cost_nanos(prompt_tokens, max_completion_tokens), current_month()),
        )
        self._check_open()
        self._ledger.claim()
        key_held: Demand | None = None
        try:
            key_held = await self._admit_key_budget(tenant, demand)  # the key's own budgets, then the tenant's
            grant = await self._limiter.admit(tenant.tenant_id, quotas, demand, self._month_to_date(tenant.tenant_id))
        except BaseException:
            self._ledger.unclaim()
            if key_held is not None:
                self._tasks.spawn(self._settle_limiter(tenant.key_id, key_held, Settlement(0, 0)))
            raise
        context.response_headers.update(grant.headers)
        self._running[demand.id] = (tenant.tenant_id, demand)
        if key_held is not None:
            self._running_keys[demand.id] = (tenant.key_id, key_held)
        return InferenceReservation(self, context, tenant, model, price, demand, end_user, kind)

    async def admit_request(self, context: RequestContext, tenant: TenantPrincipal) -> None:
        self._check_open()
        demand = Demand(context.id, rate=RateDemand(requests=1, tokens=0, slot=False))
        quotas = tenant.identity.quotas
        grant = await self._limiter.admit(tenant.tenant_id, quotas, demand, self._month_to_date(tenant.tenant_id))
        context.response_headers.update(grant.headers)

    async def admit_training(
        self, tenant: TenantPrincipal, job_id: str, model: str, estimated_tokens: int, created_at: datetime
    ) -> BudgetDemand:
        """Reserve a fine-tuning job's estimated tokens against the budgets of the month it is created in (nothing
        else); the job keeps the amounts and its ``created_at``, so its release gives back exactly this."""
        self._check_open()
        quotas = tenant.identity.quotas
        cost = self._prices.price_for(quotas.prices, model, "training").cost_nanos(estimated_tokens, 0)
        budget = BudgetDemand(estimated_tokens, cost, created_at.strftime("%Y-%m"))
        demand = Demand(job_id, budget=budget, lease_seconds=self._training_lease)
        await self._limiter.admit(tenant.tenant_id, quotas, demand, self._month_to_date(tenant.tenant_id))
        return budget

    async def release_training(self, tenant: TenantPrincipal, job_id: str, reserved: BudgetDemand) -> None:
        """Give back the reservation of a job that could not be created."""
        await self._limiter.settle(tenant.tenant_id, Demand(job_id, budget=reserved), Settlement(0, 0))

    def settle(self, tenant_id: str, demand: Demand, used: Settlement, entry: UsageEntry) -> int:
        """Record what an admitted request used (its claimed ledger room) and settle it in the limiter; returns
        the record's number for ``durable``."""
        self._running.pop(demand.id, None)
        seq = self._ledger.record(entry)
        self._settle_all(tenant_id, demand, used)
        return seq

    def _settle_all(self, tenant_id: str, demand: Demand, used: Settlement) -> None:
        """Settle the demand in the limiter: the tenant's reservation, and the key's if it held one."""
        self._tasks.spawn(self._settle_limiter(tenant_id, demand, used))
        key_held = self._running_keys.pop(demand.id, None)
        if key_held is not None:
            self._tasks.spawn(self._settle_limiter(*key_held, used))

    def withdraw(self, tenant_id: str, demand: Demand) -> None:
        """Give back everything an admitted request reserved when it never ran (refused or left while it waited
        for the engine): no record, nothing charged."""
        self._running.pop(demand.id, None)
        self._ledger.unclaim()
        self._settle_all(tenant_id, demand, Settlement(0, 0))

    def record_interim(self, entry: UsageEntry) -> int:
        """Journal what a running stream would be charged if it were cut now; returns its number for
        ``durable``."""
        return self._ledger.record_interim(entry)

    async def durable(self, seq: int) -> None:
        """Return once the ledger record numbered ``seq`` is durable."""
        await self._ledger.durable(seq)

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    async def _settle_limiter(self, tenant_id: str, demand: Demand, used: Settlement) -> None:
        for attempt in range(1, _SETTLE_ATTEMPTS + 1):
            try:
                await self._limiter.settle(tenant_id, demand, used)
                return
            except Exception:
                if attempt == _SETTLE_ATTEMPTS:
                    raise  # its lease frees the slot and the reservation
                logger.warning("settling %s failed (attempt %d); retrying", demand.id, attempt, exc_info=True)
                await asyncio.sleep(0.2 * attempt)

    async def keep_leases(self, every_seconds: float) -> None:
        """Renew the leases of requests still running (a long stream keeps its slot and its reservation)."""
        while True:
            await asyncio.sleep(every_seconds)
            by_tenant: dict[str, list[Demand]] = {}  # and by key, for reservations against a key's budgets
            for tenant_id, demand in [*self._running.values(), *self._running_keys.values()]:
                by_tenant.setdefault(tenant_id, []).append(demand)
            for tenant_id, demands in by_tenant.items():
                try:
                    await self._limiter.renew(tenant_id, demands)
                except Exception:
                    logger.warning("renewing %d leases of %s failed", len(demands), tenant_id, exc_info=True)


class InferenceReservation:
    """What one admitted inference request holds, until ``settle``."""

    def __init__(
        self,
        admission: Admission,
        context: RequestContext,
        tenant: TenantPrincipal,
        model: str,
        price: Price,
        demand: Demand,
        end_user: str | None,
        kind: str,
    ) -> None:
        self._admission = admission
        self._context = context
        self._tenant = tenant
        self._model = model
        self._price = price
        self._demand = demand
        self._end_user = end_user
        self._kind = kind
        self._settled = False
        self._seq = 0

    def settle(self, prompt_tokens: int, delivered_tokens: int, outcome: str, cached_tokens: int = 0) -> None:
        """Called once when the run ends, with the completion tokens that reached the client and the prompt tokens
        the engine read from its prefix cache; charged by the one rule of ``charges``. Later calls do nothing (safe
        from a ``finally``)."""
        if self._settled:
            return
        self._settled = True
        if outcome == "aborted" and (self._admission.interrupted or self._kind == BATCH_KIND):
            # Cut by our shutdown, or a batch's request stopped by its cancel, expiry or takeover (no client of a
            # batch can leave): ours, not the client's, so nothing undelivered is charged.
            outcome = "failed"
        entry = self._entry(outcome, prompt_tokens, delivered_tokens, cached_tokens)
        # Charged to the month of its ledger record (a stream may end in the month after it began).
        used = Settlement(
            entry.prompt_tokens + entry.completion_tokens, entry.cost_nanos, month=entry.created_at.strftime("%Y-%m")
        )
        self._seq = self._admission.settle(self._tenant.tenant_id, self._demand, used, entry)

    def withdraw(self) -> None:
        """The request never ran (refused, or its client left, while it waited for the engine): give everything
        back, charge nothing. Instead of ``settle``, not after it."""
        if self._settled:
            return
        self._settled = True
        self._admission.withdraw(self._tenant.tenant_id, self._demand)

    async def delivering(self, prompt_tokens: int, delivered_tokens: int, cached_tokens: int = 0) -> None:
        """A stream is about to send tokens, ``delivered_tokens`` with those already sent: return once what it
        would be charged if it were cut right after them (our failure) is durable, so a crash bills it (its cached
        prompt tokens as far as the engine reported them so far: upstream, only at the end)."""
        if self._settled:
            return
        entry = self._entry("failed", prompt_tokens, delivered_tokens, cached_tokens)
        await self._admission.durable(self._admission.record_interim(entry))

    def _entry(self, outcome: str, prompt_tokens: int, delivered_tokens: int, cached_tokens: int) -> UsageEntry:
        prompt_tokens, completion_tokens = charged_tokens(outcome, prompt_tokens, delivered_tokens)
        cached_tokens = min(cached_tokens, prompt_tokens)  # none of a prompt that is not charged
        return UsageEntry(
            request_id=self._context.id,
            tenant_id=self._tenant.tenant_id,
            key_id=self._tenant.key_id,
            model=self._model,
            kind=self._kind,
            outcome=outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_nanos=self._price.cost_nanos(prompt_tokens, completion_tokens, cached_tokens),
            created_at=utcnow(),
            end_user=self._end_user,
            client_request_id=self._context.client_request_id,
            cached_tokens=cached_tokens,
        )

    async def durable(self) -> None:
        """Return once the settled record is durable (at once if not settled yet)."""
        if self._seq:
            await self._admission.durable(self._seq)
