"""The processes that compile clients' structured-output constraints (``gateway.inference.grammar_check``): a few
slots of one worker process each (``gateway.workers.Workers``), so that a compile which overruns its budget kills
only its own process, never a check of another tenant beside it.

A slot's process is warmed (xgrammar imported, the tokenizer loaded) before it takes a compile, outside the
budget: a compile's time is the compile's alone. Compiles queue for a free slot; when ``waiting`` already wait, a
new one is answered 503 rather than queued, so checks cannot pile up in the gateway."""

from __future__ import annotations

import asyncio

from gateway.errors import ServiceUnavailable
from gateway.inference.grammar_check import Verdict, check_compiles, warm
from gateway.workers import Workers, WorkFailed, WorkTimedOut

WARM_UP_SECONDS = 120.0
"""How long a fresh process may take to import xgrammar and load the tokenizer."""


class _Slot:
    def __init__(self) -> None:
        self.workers = Workers(1)
        self.warm = False


class GrammarPool:
    """``processes`` compile slots against ``vocabulary`` (a tokenizer dir; None: single bytes), each compile within
    ``budget`` seconds."""

    def __init__(self, processes: int, vocabulary: str | None, budget: float, waiting: int) -> None:
        self.budget = budget
        self._vocabulary = vocabulary
        self._waiting_limit = waiting
        self._waiting = 0
        self._free: asyncio.Queue[_Slot] = asyncio.Queue()
        self._slots = [_Slot() for _ in range(processes)]
        for slot in self._slots:
            self._free.put_nowait(slot)

    async def verdict(self, kind: str, spec: str) -> Verdict:
        """Compile ``spec`` of ``kind`` in a free slot: None if it compiles within the budget, else the problem."""
        if self._waiting >= self._waiting_limit:
            raise ServiceUnavailable("Too many structured-output constraints are being checked; retry shortly.")
        self._waiting += 1
        try:
            slot = await self._free.get()
        finally:
            self._waiting -= 1
        try:
            return await self._compile(slot, kind, spec)
        finally:
            self._free.put_nowait(slot)

    async def _compile(self, slot: _Slot, kind: str, spec: str) -> Verdict:
        if not slot.warm:
            try:
                await slot.workers.call(warm, self._vocabulary, budget=WARM_UP_SECONDS)
            except (WorkTimedOut, WorkFailed):
                raise ServiceUnavailable("The structured-output checker is not ready; retry shortly.") from None
            slot.warm = True
        try:
            return await slot.workers.call(
                check_compiles, kind, spec, self._vocabulary, self.budget, budget=self.budget
            )
        except WorkTimedOut:  # its process was killed (and a new one started, cold)
            slot.warm = False
            return "too_complex", f"compiling it did not end within {self.budget:g} s"
        except WorkFailed:
            slot.warm = False
            raise ServiceUnavailable("The structured-output check failed; retry shortly.") from None

    def close(self) -> None:
        for slot in self._slots:
            slot.workers.close()
