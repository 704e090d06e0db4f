"""The eval runner: executes queued eval runs inside the gateway, beside its engine (the fine-tuning worker has
no engine), so that every sample is an ordinary request — admitted against the tenant's rate limits and budget
as the key that created the run, batched with everyone's traffic on the engine, metered in the ledger (kind
``eval``) — and then graded.

Any gateway claims runs from the database (compare-and-set) and heartbeats them; a run whose runner stopped is
taken over and resumed where it was, since each item's sample and grades are stored as it finishes. A run that
is cancelled stops within a heartbeat, its samples in flight aborted (billed as requests whose client left) and
not written. Items run ``concurrency`` at a time; one that hits a rate limit waits
and tries again; a spent budget, a revoked key or a suspended tenant ends the run as failed. Grading runs in the
worker processes (``gateway.workers``) under a time budget; an item that overruns it, or whose text is too long
to compare, is that item's error with a code and a message of ours (never an exception's own text).

Model graders (``gateway.evals.judge``) ask their judge model the way a sample is taken — admitted as the run's
key, queued fairly, metered as kind ``eval`` — within ``grader_seconds`` of generation and ``grader_max_tokens``
tokens per item; a judge that is refused, overruns or answers out of shape is that item's error. A judge model
the run's key can no longer call ends the run as failed, like its sampled model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from typing import Any

from starlette.concurrency import run_in_threadpool

from gateway import bounds
from gateway.accounting.admission import Admission
from gateway.claim_loop import claim_forever
from gateway.context import RequestContext, new_request_id
from gateway.db import Eval, EvalRun, EvalRunItem
from gateway.errors import APIError, QuotaExceeded, RateLimited, ServiceUnavailable, as_api_error
from gateway.evals.graders import Grade, GradingError, GradingTimedOut, grade_item
from gateway.evals.judge import judge_models, judge_request, model_grader, verdict
from gateway.evals.models import ModelGrader
from gateway.evals.objects import usage_object
from gateway.evals.queue import RunQueue
from gateway.evals.recipe import CompletionsRecipe, ItemStatus, JsonlRecipe, RunStatus, run_recipe
from gateway.evals.templates import TemplateError
from gateway.inference.api_types import ChatCompletionRequest, ChatMessage
from gateway.inference.catalog import ModelCatalog, ServedModel
from gateway.inference.generation import ChoiceResult, Usage
from gateway.inference.prompts import chat_prompt, chat_turns
from gateway.inference.runs import RequestCaps, RunRequest, Serving, admit_run, unless_gone
from gateway.inference.structured import StructuredOutputs
from gateway.inference.tools import NO_TOOLS
from gateway.ops.metrics import Metrics
from gateway.scheduling.slots import Scheduler
from gateway.tenancy.principal import Authenticator, TenantPrincipal
from gateway.workers import Workers, WorkFailed, WorkTimedOut

logger = logging.getLogger(__name__)
_RATE_LIMIT_RETRIES = 60


class RunStopped(Exception):
    """The run cannot go on: ``error`` says why (it ends as failed)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message}


Recipe = CompletionsRecipe | JsonlRecipe
Outcome = tuple[ItemStatus, dict[str, Any], list[dict[str, Any]]]
"""An item's status, sample and grades."""


class EvalRunner:
    def __init__(
        self,
        queue: RunQueue,
        principals: Authenticator,
        catalog: ModelCatalog,
        admission: Admission,
        caps: RequestCaps,
        metrics: Metrics,
        workers: Workers,
        structured: StructuredOutputs,
        scheduler: Scheduler,
        *,
        concurrency: int = 16,
        grader_max_tokens: int = 128,
        grader_seconds: float = 60.0,
        heartbeat_seconds: float = 3.0,
        stale_after_seconds: float = 30.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self._queue = queue
        self._principals = principals
        self._catalog = catalog
        self._admission = admission
        self._caps = caps
        self._metrics = metrics
        self._workers = workers
        self._structured = structured
        self._scheduler = scheduler
        self._concurrency = concurrency
        self._grader_max_tokens = grader_max_tokens
        self._grader_seconds = grader_seconds
        self._heartbeat = heartbeat_seconds
        self._stale_after = stale_after_seconds
        self._poll = poll_seconds
        self.runner_id = f"{socket.gethostname()}-evals-{secrets.token_hex(4)}"

    async def run_forever(self) -> None:
        await claim_forever(
            lambda: self._queue.claim(self.runner_id, self._stale_after),
            self.execute,
            lambda: self._admission.draining,
            self._poll,
            "eval runner",
        )

    async def execute(self, run_id: str) -> None:
        run, definition = await run_in_threadpool(self._queue.run_for_runner, run_id)
        recipe = run_recipe(run)
        stopped = asyncio.Event()
        beating = asyncio.create_task(self._beat(run_id, stopped))
        status, error = RunStatus.COMPLETED, None
        try:
            tenant = await self._tenant(run)
            served = await self._run_model(run, tenant) if isinstance(recipe, CompletionsRecipe) else None
            judges = {model: await self._served(model, tenant) for model in judge_models(definition.testing_criteria)}
            items = await run_in_threadpool(self._queue.pending, run_id)
            await self._items(run, recipe, definition, tenant, served, judges, items, stopped)
        except RunStopped as exc:
            status, error = RunStatus.FAILED, exc.error
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        if not stopped.is_set():  # else cancelled, or taken over: not this runner's to end
            await run_in_threadpool(self._queue.finish, run_id, self.runner_id, status, error)

    async def _beat(self, run_id: str, stopped: asyncio.Event) -> None:
        while not stopped.is_set():
            await asyncio.sleep(self._heartbeat)
            try:
                if not await run_in_threadpool(self._queue.heartbeat, run_id, self.runner_id):
                    stopped.set()
            except Exception:
                logger.warning("heartbeat of eval run %s failed", run_id, exc_info=True)

    async def _tenant(self, run: EvalRun) -> TenantPrincipal:
        try:
            return await self._principals.principal_of_key(run.key_id or "")
        except APIError as exc:  # the key revoked, expired or gone, or its tenant suspended
            raise RunStopped(exc.code or "invalid_api_key", exc.message) from exc

    async def _run_model(self, run: EvalRun, tenant: TenantPrincipal) -> ServedModel:
        """The run's model: the one it named, or the one its alias drew when the run was created (then the key
        may use it through the alias, as it could then)."""
        named = run.data_source.get("model") or run.model
        if named == run.model:
            return await self._served(run.model, tenant)
        try:
            tenant.check_model(named, (run.model,))
            return await self._catalog.resolve_model(run.model, tenant.tenant_id)
        except APIError as exc:
            raise RunStopped(exc.code or "model_not_found", exc.message) from exc

    async def _served(self, model: str, tenant: TenantPrincipal) -> ServedModel:
        serving = self._serving(tenant)
        try:
            return await serving.model(model)
        except APIError as exc:
            raise RunStopped(exc.code or "model_not_found", exc.message) from exc

    def _serving(self, tenant: TenantPrincipal) -> Serving:
        context = RequestContext(id=new_request_id())
        return Serving(
            context,
            tenant,
            self._catalog,
            self._admission,
            self._caps,
            self._metrics,
            self._structured,
            self._scheduler,
        )

    async def _items(
        self,
        run: EvalRun,
        recipe: Recipe,
        definition: Eval,
        tenant: TenantPrincipal,
        served: ServedModel | None,
        judges: dict[str, ServedModel],
        items: list[EvalRunItem],
        stopped: asyncio.Event,
    ) -> None:
        slots = asyncio.Semaphore(self._concurrency)
        fatal: list[RunStopped] = []

        async def one(item: EvalRunItem) -> None:
            async with slots:
                if stopped.is_set() or fatal:
                    return
                try:
                    status, sample, results = await unless_gone(
                        stopped.wait, self._item(run, recipe, definition, tenant, served, judges, item)
                    )
                except asyncio.CancelledError:
                    if stopped.is_set():  # the run stopped meanwhile: its sampling is aborted (billed as a request
                        return  # whose client left), nothing is written
                    raise
                except RunStopped as exc:
                    fatal.append(exc)
                    return
                except Exception:  # whatever breaks on one item is that item's error, not the run's (the detail is
                    # logged here; the tenant sees the category only)
                    logger.exception("eval run %s: item %d failed", run.id, item.position)
                    failed = {"code": "item_failed", "message": "This item could not be sampled or graded."}
                    status, sample, results = ItemStatus.ERROR, {"error": failed}, []
                if not await run_in_threadpool(
                    self._queue.record, run.id, self.runner_id, item.id, status, sample, results
                ):
                    stopped.set()  # cancelled, deleted or taken over: the other items stop

        await asyncio.gather(*(one(item) for item in items))
        if fatal:
            raise fatal[0]

    async def _item(
        self,
        run: EvalRun,
        recipe: Recipe,
        definition: Eval,
        tenant: TenantPrincipal,
        served: ServedModel | None,
        judges: dict[str, ServedModel],
        item: EvalRunItem,
    ) -> Outcome:
        if served is None or not isinstance(recipe, CompletionsRecipe):  # a jsonl run: the item brought its sample
            sample: dict[str, Any] = {
                "output_text": str((item.given_sample or {}).get("output_text", "")),
                "error": None,
            }
            namespace = dict(item.given_sample or {})
        else:
            try:
                sample = await self._sample(run, recipe, tenant, served, item)
            except (TemplateError, APIError) as exc:
                error = as_api_error(exc) if isinstance(exc, APIError) else None
                code = error.code if error and error.code else "invalid_input"
                return ItemStatus.ERROR, {"error": {"code": code, "message": str(exc)}}, []
            namespace = {"output_text": sample["output"][0]["content"]}
        try:
            grades = await self._grades(
                definition.testing_criteria, {"item": item.item, "sample": namespace}, tenant, judges
            )
        except TemplateError as exc:
            return ItemStatus.ERROR, {**sample, "error": {"code": "invalid_template", "message": str(exc)}}, []
        except APIError as exc:  # a judge's request refused (longer than its model's context, ...)
            return (
                ItemStatus.ERROR,
                {**sample, "error": {"code": exc.code or "grading_failed", "message": exc.message}},
                [],
            )
        except GradingError as exc:
            return ItemStatus.ERROR, {**sample, "error": {"code": exc.code, "message": str(exc)}}, []
        except WorkTimedOut:
            timed_out = f"Grading this item took longer than {bounds.GRADING_SECONDS:g} seconds."
            return ItemStatus.ERROR, {**sample, "error": {"code": "grading_timeout", "message": timed_out}}, []
        except WorkFailed:
            failed = {"code": "grading_failed", "message": "This item could not be graded."}
            return ItemStatus.ERROR, {**sample, "error": failed}, []
        passed = all(g.passed for g in grades)
        return (ItemStatus.PASS if passed else ItemStatus.FAIL), sample, [g.result() for g in grades]

    async def _sample(
        self, run: EvalRun, recipe: CompletionsRecipe, tenant: TenantPrincipal, served: ServedModel, item: EvalRunItem
    ) -> dict[str, Any]:
        """One completion for the item, admitted, metered and run like any chat request."""
        params = recipe.sampling_params
        assert recipe.input_messages is not None  # a run without them grades given samples (``run_recipe``)
        rendered = recipe.input_messages.rendered(item.item)
        messages = [{"role": role, "content": content} for role, content in rendered]
        body = ChatCompletionRequest(
            model=run.model,
            messages=[ChatMessage(role=role, content=content) for role, content in rendered],
            temperature=params.temperature,
            top_p=params.top_p,
            max_completion_tokens=params.max_completion_tokens,
            seed=params.seed,
        )
        choice, usage = await self._complete(body, tenant, served)
        return {
            "input": messages,
            "output": [{"role": "assistant", "content": choice.text}],
            "finish_reason": choice.finish_reason,
            "model": served.id,
            "usage": usage_object(usage),
            "error": None,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_completion_tokens": params.max_completion_tokens,
            "seed": params.seed,
        }

    async def _grades(
        self,
        criteria: list[dict[str, Any]],
        namespaces: dict[str, dict[str, Any]],
        tenant: TenantPrincipal,
        judges: dict[str, ServedModel],
    ) -> list[Grade]:
        """Every criterion's grade of one item, in the eval's order: first those that need no model (in a worker
        process: an item they cannot grade costs no judge), then the model graders' from their judges, one at a time."""
        graders = [model_grader(criterion) for criterion in criteria]
        rules = [criterion for criterion, grader in zip(criteria, graders, strict=True) if grader is None]
        graded: list[Grade] = []
        if rules:
            graded = await self._workers.call(
                grade_item, rules, namespaces, bounds.GRADING_SECONDS, budget=bounds.GRADING_SECONDS
            )
        ruled = iter(graded)
        return [
            next(ruled) if grader is None else await self._judge(grader, namespaces, tenant, judges[grader.model])
            for grader in graders
        ]

    async def _judge(
        self, grader: ModelGrader, namespaces: dict[str, dict[str, Any]], tenant: TenantPrincipal, judge: ServedModel
    ) -> Grade:
        request = judge_request(grader, namespaces, self._grader_max_tokens)
        choice, usage = await self._complete(request, tenant, judge, self._grader_seconds)
        return verdict(grader, request, choice, usage)

    async def _complete(
        self,
        body: ChatCompletionRequest,
        tenant: TenantPrincipal,
        served: ServedModel,
        seconds: float | None = None,
    ) -> tuple[ChoiceResult, Usage]:
        """One chat completion for the run, admitted, metered and run like any chat request (a rate limit waits and
        tries again); generating for longer than ``seconds`` is ``GradingTimedOut`` (billed as a request left)."""
        turns = chat_turns(body.messages)
        for _attempt in range(_RATE_LIMIT_RETRIES):
            serving = self._serving(tenant)
            prompt = await chat_prompt(turns, NO_TOOLS, served.engine.tokenizer, serving.caps.prompts)
            request = RunRequest(
                body=body,
                served=served,
                prompts=[prompt],
                requested_max_tokens=body.max_completion_tokens,
                max_tokens_param="max_completion_tokens",
                prompt_param="messages",
                logprobs=None,
                kind="eval",
            )
            try:
                generation = await admit_run(request, serving)
            except QuotaExceeded as exc:
                raise RunStopped("insufficient_quota", exc.message) from exc
            except RateLimited as exc:
                if exc.headers.get("x-should-retry") == "false":
                    raise  # this sample can never fit the limit: an error for this item
                await asyncio.sleep(int(exc.headers.get("retry-after-ms", "1000")) / 1000)
                continue
            except ServiceUnavailable:
                # Draining, or usage cannot be made durable for now: the item is not the problem. Wait; if this
                # gateway is going away, the run's heartbeat lapses and another runner resumes the item.
                await asyncio.sleep(1)
                continue
            try:
                async with asyncio.timeout(seconds):
                    choices = await generation.collect()
            except TimeoutError:
                raise GradingTimedOut(f"The grader model took longer than {seconds:g} seconds to answer.") from None
            finally:
                generation.close()
            return choices[0], generation.usage
        raise RunStopped("rate_limit_exceeded", "The tenant's rate limits kept refusing the run's samples.")
