"""Model graders, as OpenAI defines them: ``score_model`` (a model scores the sample within a range; it passes at
``pass_threshold``) and ``label_model`` (a model picks one of ``labels``; it passes on one of ``passing_labels``).

What the judge is asked: the grader's input messages rendered with the item and the sample (``templates``), then one
system message naming the answer's shape. Its answer is constrained by a JSON schema enforced token by token by the
engine's structured outputs — ``{"result": <a number within the range>}`` or ``{"result": <one of the labels>}`` — so
any model, the smallest included, answers in shape; one that still does not parse (cut by its token cap) is that
item's error (``JudgeAnswerInvalid``), never the run's. The eval runner (``gateway.evals.runner``) sends the request
down the path every sample takes: admitted as the run's key, queued fairly, metered as kind ``eval``.

Checked when the eval is created (``check_judges``): the judge model is one the tenant's key may call, its token cap
is within ``LLMAAS_EVAL_GRADER_MAX_TOKENS``, and the answer's schema compiles (range and labels bounded by
``gateway.bounds``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from gateway.errors import APIError, InvalidRequestError
from gateway.evals.graders import Grade, GradingError
from gateway.evals.models import LabelModelGrader, ModelGrader, ScoreModelGrader
from gateway.evals.objects import usage_object
from gateway.evals.templates import render
from gateway.inference.api_types import ChatCompletionRequest
from gateway.inference.generation import ChoiceResult, Usage
from gateway.inference.runs import Serving

MODEL_GRADERS = frozenset({"score_model", "label_model"})
"""The criteria whose grade comes from a model (the others are graded in the worker processes)."""
_MODEL_GRADER: TypeAdapter[ModelGrader] = TypeAdapter(Annotated[ModelGrader, Field(discriminator="type")])
_SCHEMA_NAME = "grade"


class JudgeAnswerInvalid(GradingError):
    code = "grader_output_invalid"


def model_grader(criterion: dict[str, Any]) -> ModelGrader | None:
    """A stored criterion as a model grader (validated as it was at creation); None for one that needs no model."""
    if criterion.get("type") not in MODEL_GRADERS:
        return None
    return _MODEL_GRADER.validate_python(criterion)


def answer_schema(grader: ModelGrader) -> dict[str, Any]:
    """The JSON schema the judge's answer must match."""
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.range
        result: dict[str, Any] = {"type": "number", "minimum": low, "maximum": high}
    else:
        result = {"type": "string", "enum": grader.labels}
    return {"type": "object", "properties": {"result": result}, "required": ["result"], "additionalProperties": False}


def _instruction(grader: ModelGrader) -> str:
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.range
        return f'Answer with a JSON object {{"result": <score>}}, the score a number from {low:g} to {high:g}.'
    labels = ", ".join(json.dumps(label, ensure_ascii=False) for label in grader.labels)
    return f'Answer with a JSON object {{"result": <label>}}, the label one of {labels}.'


def judge_request(grader: ModelGrader, namespaces: dict[str, dict[str, Any]], max_tokens: int) -> ChatCompletionRequest:
    """The judge's chat request for one item; raises ``TemplateError`` when a message names a variable the item or
    sample lacks. ``max_tokens``: the cap when the grader sets none."""
    messages = [{"role": m.role, "content": render(m.template(), namespaces)} for m in grader.input]
    # The answer's shape goes into the leading system message: many chat templates refuse a system message later.
    if messages and messages[0]["role"] in ("system", "developer"):
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{_instruction(grader)}"}
    else:
        messages.insert(0, {"role": "system", "content": _instruction(grader)})
    params = grader.sampling_params if isinstance(grader, ScoreModelGrader) else None
    return ChatCompletionRequest.model_validate(
        {
            "model": grader.model,
            "messages": messages,
            "temperature": params.temperature if params and params.temperature is not None else 0.0,
            "top_p": params.top_p if params else None,
            "seed": params.seed if params else None,
            "max_completion_tokens": (params.max_completions_tokens if params else None) or max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": _SCHEMA_NAME, "schema": answer_schema(grader), "strict": True},
            },
        },
        strict=False,
    )


def verdict(grader: ModelGrader, request: ChatCompletionRequest, choice: ChoiceResult, usage: Usage) -> Grade:
    """The grade the judge's answer gives (``JudgeAnswerInvalid`` when it does not parse or match), with what the
    judge was asked, what it answered and its usage."""
    try:
        result = json.loads(choice.text)["result"]
    except (ValueError, TypeError, KeyError):
        raise JudgeAnswerInvalid(
            f"{grader.name[:100]}: the grader model's answer is not a JSON object with a result"
            + (" (it reached its token cap)." if choice.finish_reason == "length" else ".")
        ) from None
    judged: dict[str, Any] = {
        "input": [{"role": m.role, "content": m.text()} for m in request.messages],
        "output": [{"role": "assistant", "content": choice.text}],
        "finish_reason": choice.finish_reason,
        "model": grader.model,
        "usage": usage_object(usage),
    }
    if isinstance(grader, ScoreModelGrader):
        low, high = grader.range
        if isinstance(result, bool) or not isinstance(result, int | float) or not low <= result <= high:
            raise JudgeAnswerInvalid(f"{grader.name[:100]}: the grader model's score is not within the range.")
        score = float(result)
        return Grade(grader.name, grader.type, score >= grader.threshold, score, {"sample": judged})
    if result not in grader.labels:
        raise JudgeAnswerInvalid(f"{grader.name[:100]}: the grader model's label is not one of the labels.")
    passed = result in grader.passing_labels
    return Grade(grader.name, grader.type, passed, 1.0 if passed else 0.0, {"label": result, "sample": judged})


async def check_judges(criteria: list[Any], serving: Serving, max_tokens: int) -> None:
    """Every model grader's model is one the tenant's key may call and that generates text, its token cap within
    ``max_tokens``, and its answer's schema compiles; else a 400 (403, 404) naming the criterion's field."""
    for index, criterion in enumerate(criteria):
        if not isinstance(criterion, ScoreModelGrader | LabelModelGrader):
            continue
        param = f"testing_criteria[{index}]"
        try:
            await serving.model(criterion.model)
        except APIError as exc:
            exc.param = f"{param}.model"
            raise
        if isinstance(criterion, ScoreModelGrader):
            cap = criterion.sampling_params.max_completions_tokens
            if cap is not None and cap > max_tokens:
                raise InvalidRequestError(
                    f"A model grader's judge may generate at most {max_tokens} tokens per item on this server.",
                    param=f"{param}.sampling_params.max_completions_tokens",
                )
        await serving.structured.json_schema(answer_schema(criterion), param)


def judge_models(criteria: list[dict[str, Any]]) -> list[str]:
    """The models the eval's model graders call (each once)."""
    return list(dict.fromkeys(grader.model for c in criteria if (grader := model_grader(c)) is not None))
