"""One response being made: the conversation it continues (its stored chain), its instructions and input,
rendered with the model's chat template as a chat request is (``gateway.responses.conversation``; function tools
planned by ``gateway.inference.tools``) and admitted through ``admit_run`` (the ledger bills the whole rendered
chain); the output's constraint (a required or named tool choice's, else ``text.format``'s, which is checked
either way); and the response object it ends as.

``truncation: "auto"`` drops the oldest turns of the chain (never the request's own input) until the prompt leaves
room for the answer; ``"disabled"`` (the default) refuses a chain that does not fit with
``context_length_exceeded``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from engine.protocol import StructuredOutput, Tokenizer
from gateway.errors import InvalidRequestError
from gateway.inference.api_types import ChatCompletionRequest
from gateway.inference.catalog import ServedModel
from gateway.inference.generation import GenerationRun
from gateway.inference.prompts import chat_prompt, chat_turns
from gateway.inference.runs import RunRequest, Serving, admit_run
from gateway.inference.tools import NamedTool, ToolPlan, ToolSpec, check_history, plan_tools
from gateway.responses.conversation import chat_messages, stored_item, turn_starts
from gateway.responses.objects import (
    IncompleteDetails,
    InputItemOut,
    InputTokensDetails,
    OutputItem,
    ResponseErrorOut,
    ResponseObject,
    ResponseUsage,
    Status,
    new_id,
)
from gateway.responses.output import Output
from gateway.responses.requests import FunctionChoice, JsonSchemaFormat, ResponseCreateRequest
from gateway.responses.store import NO_CHAIN, Chain, ResponseStore


@dataclass
class Turn:
    body: ResponseCreateRequest
    tenant_id: str
    id: str
    created_at: int
    served: ServedModel
    chain: Chain
    items: list[InputItemOut]
    """The request's own input, as stored and listed."""
    plan: ToolPlan
    run: GenerationRun

    def output(self) -> Output:
        return Output(self.plan.parser())

    def snapshot(
        self, status: Status, output: list[OutputItem], *, error: ResponseErrorOut | None = None
    ) -> ResponseObject:
        """The response object as it stands (in progress, or finished with ``output``)."""
        body = self.body
        usage = self.run.usage
        choice = body.tool_choice
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=self.served.id,
            output=output,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            store=body.stored,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            text=body.text_config(),
            tool_choice=choice.model_dump() if isinstance(choice, FunctionChoice) else choice or "auto",
            tools=[tool.model_dump() for tool in body.function_tools()],
            truncation=body.truncation or "disabled",
            usage=ResponseUsage(
                input_tokens=usage.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
                output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            )
            if status != "in_progress"
            else None,
            user=body.user,
            metadata=body.metadata or {},
        )

    def finished(self, output: Output) -> ResponseObject:
        return self.snapshot("incomplete" if output.incomplete else "completed", output.items)

    def remember(self, store: ResponseStore, response: ResponseObject) -> None:
        """Blocking: the finished response, if the request asked it kept."""
        if self.body.stored:
            store.save(self.tenant_id, response, self.items, self.chain.depth + 1)


async def start_turn(body: ResponseCreateRequest, serving: Serving, store: ResponseStore) -> Turn:
    """Everything checked and admitted; the run not started yet."""
    if body.stream_options is not None and not body.streamed:
        raise InvalidRequestError("stream_options is only allowed when stream is true", param="stream_options")
    served = await serving.model(body.model)
    tokenizer = served.engine.tokenizer
    plan = await _tool_plan(body, serving, tokenizer)
    text_format = await _text_format(body, serving)
    tenant_id = serving.tenant.tenant_id
    previous = body.previous_response_id
    chain = await run_in_threadpool(store.chain, tenant_id, previous) if previous else NO_CHAIN
    own = [stored_item(item) for item in body.input_items()]
    kept = chain.items[await _dropped(body, serving, served, plan, chain, own) :]
    chat = _chat_request(body, [*kept, *own])
    turns = chat_turns(chat.messages)
    check_history(turns, "input")
    prompt = await chat_prompt(turns, plan, tokenizer, serving.caps.prompts)
    run_request = RunRequest(
        body=chat,
        served=served,
        prompts=[prompt],
        requested_max_tokens=body.max_output_tokens,
        max_tokens_param="max_output_tokens",
        prompt_param="input",
        logprobs=None,
        structured=plan.structured or text_format,
    )
    run = await admit_run(run_request, serving)
    return Turn(body, tenant_id, new_id("resp"), int(time.time()), served, chain, own, plan, run)


def _chat_request(body: ResponseCreateRequest, items: list[InputItemOut]) -> ChatCompletionRequest:
    """The conversation with the sampling fields, as the chat path runs it."""
    return ChatCompletionRequest(
        model=body.model,
        messages=chat_messages(items, body.instructions),
        max_completion_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        user=body.user,
        stream=body.streamed,
    )


async def _tool_plan(body: ResponseCreateRequest, serving: Serving, tokenizer: Tokenizer) -> ToolPlan:
    specs = [
        ToolSpec(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters or {"type": "object", "properties": {}},
            strict=tool.strict is not False,  # the Responses API's functions are strict unless told otherwise
            param=f"tools[{index}].parameters",
        )
        for index, tool in enumerate(body.function_tools())
    ]
    choice = body.tool_choice
    named = NamedTool(choice.name) if isinstance(choice, FunctionChoice) else choice
    return await plan_tools(
        specs,
        named,
        body.parallel_tool_calls,
        serving.structured,
        "tools",
        tokenizer=tokenizer,
        tool_call_parser=serving.tool_call_parser,
    )


async def _dropped(
    body: ResponseCreateRequest,
    serving: Serving,
    served: ServedModel,
    plan: ToolPlan,
    chain: Chain,
    own: list[InputItemOut],
) -> int:
    """How many of the chain's oldest items to leave out: none, unless ``truncation`` is ``"auto"`` and the whole
    conversation leaves no room for the answer; then the fewest whole turns that make room (found by bisection),
    or the whole chain."""
    if body.truncation != "auto" or not chain.items:
        return 0
    room_for = body.max_output_tokens or 1
    cuts = sorted({0, *turn_starts(chain.items), len(chain.items)})

    async def fits(dropped: int) -> bool:
        chat = _chat_request(body, [*chain.items[dropped:], *own])
        try:
            prompt = await chat_prompt(chat_turns(chat.messages), plan, served.engine.tokenizer, serving.caps.prompts)
        except InvalidRequestError:  # too many characters to even tokenize
            return False
        return len(prompt) + room_for <= served.engine.max_model_len

    if await fits(0):
        return 0
    low, high = 1, len(cuts) - 1  # the answer lies in cuts[low..high]: all of the chain dropped is the last resort
    while low < high:
        middle = (low + high) // 2
        if await fits(cuts[middle]):
            high = middle
        else:
            low = middle + 1
    return cuts[low]


async def _text_format(body: ResponseCreateRequest, serving: Serving) -> StructuredOutput | None:
    chosen = body.text.format if body.text is not None else None
    if chosen is None or chosen.type == "text":
        return None
    if isinstance(chosen, JsonSchemaFormat):
        return await serving.structured.json_schema(chosen.schema_, "text.format.schema")
    return await serving.structured.requested(("text.format", "json_object", True))
