"""JSON bodies parsed strictly (FastAPI's "custom Request and APIRoute class" pattern): pydantic-core's parser
instead of the standard library's, so a body carrying a lone UTF-16 surrogate (``"\\ud800"``, which no UTF-8
text can hold and which would break the tokenizer and the database later), ``NaN`` or ``Infinity`` is a 400
naming the problem instead of reaching a handler. So is a string holding a NUL character (``"\\u0000"``),
which PostgreSQL cannot store or compare.

Query parameters are strict too: one the route does not declare is a 400 naming it (``code=unknown_parameter``),
never silently dropped (a list filter we do not have would otherwise answer as if it held). A route class may
name families of bracketed parameters it reads itself (``metadata[key]=value``: ``bracketed``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request, Response
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.routing import APIRoute

from gateway.errors import InvalidRequestError


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                parsed = pydantic_core.from_json(body, allow_inf_nan=False)
            except ValueError as exc:
                # FastAPI turns a JSONDecodeError into a 400 that names the reason.
                raise json.JSONDecodeError(_reason(exc), body.decode("utf-8", "replace")[:100], 0) from None
            if b"\\u0000" in body and _holds_nul(parsed):
                raise json.JSONDecodeError("a string holds a NUL character (\\u0000)", "", 0)
            self._json = parsed
        return self._json


def _holds_nul(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _reason(exc: ValueError) -> str:
    text = str(exc)
    if "hex escape" in text or "surrogate" in text:
        return f"a string holds an invalid \\u escape (lone surrogates are not text): {text}"
    return text


class StrictJSONRoute(APIRoute):
    bracketed: frozenset[str] = frozenset()
    """Query parameter families ``name[...]`` the route's handler reads from the request itself."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = {param.alias for param in get_flat_dependant(self.dependant).query_params}

        def declared(name: str) -> bool:
            return name in known or (name.endswith("]") and name.split("[", 1)[0] in self.bracketed)

        async def strict_handler(request: Request) -> Response:
            unknown = sorted({name for name in request.query_params if not declared(name)})
            if unknown:
                plural = "s" if len(unknown) > 1 else ""
                raise InvalidRequestError(
                    f"Unrecognized query parameter{plural} supplied: {', '.join(unknown)}",
                    param=unknown[0],
                    code="unknown_parameter",
                )
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
