"""Recent traffic per minute, for the service page's rolling windows (the last 1, 5 and 15 minutes).

Each gateway counts its own generation requests per UTC minute in memory (a dict update on the request path):
by outcome — answered, refused (a 4xx: nothing ran), server error (a 5xx), client disconnect — with the latency
of the answered ones and the time to first token of every run as histogram bucket counts. ``MinuteStore``
(``gateway.ops.minute_store``) writes the minutes that changed to the database every few seconds, one row per
gateway and minute, and the page's read merges every gateway's rows: the windows cover the whole deployment,
not one process. Refusals and disconnects are counted, never timed: a request refused in a millisecond does
not pull the latency percentiles down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any, Literal

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))
"""Upper bounds (seconds) of the latency and TTFT buckets; the last catches everything slower."""
Outcome = Literal["answered", "refused", "server_error", "disconnected"]
OUTCOMES: tuple[Outcome, ...] = ("answered", "refused", "server_error", "disconnected")
WINDOWS_MINUTES = (1, 5, 15)
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
"""The routes whose requests are counted and timed (by their route template)."""
KEPT_MINUTES = max(WINDOWS_MINUTES) + 1


def outcome_of(status: int, client_left: bool) -> Outcome:
    if client_left:
        return "disconnected"
    if status >= 500:
        return "server_error"
    return "refused" if status >= 400 else "answered"


def empty_minute() -> dict[str, Any]:
    return {**dict.fromkeys(OUTCOMES, 0), "latency": [0] * len(BUCKETS), "ttft": [0] * len(BUCKETS)}


def _bucket(seconds: float) -> int:
    return next(i for i, bound in enumerate(BUCKETS) if seconds <= bound)


class MinuteCounts:
    """This gateway's counts for the last ``KEPT_MINUTES`` minutes, keyed by minute (UTC epoch seconds // 60)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minutes: dict[int, dict[str, Any]] = {}
        self._changed: set[int] = set()

    def _current(self) -> dict[str, Any]:
        minute = int(self._clock() // 60)
        self._changed.add(minute)
        counts = self._minutes.get(minute)
        if counts is None:
            counts = self._minutes[minute] = empty_minute()
            for old in [m for m in self._minutes if m <= minute - KEPT_MINUTES]:
                del self._minutes[old]
        return counts

    def request(self, outcome: Outcome, seconds: float) -> None:
        counts = self._current()
        counts[outcome] += 1
        if outcome == "answered":
            counts["latency"][_bucket(seconds)] += 1

    def first_token(self, seconds: float) -> None:
        self._current()["ttft"][_bucket(seconds)] += 1

    def mark_changed(self, minutes: Iterable[int]) -> None:
        self._changed.update(minutes)

    def take_changed(self) -> dict[int, dict[str, Any]]:
        """The minutes counted in since the last call, whole (each gateway owns its rows: they are overwritten).
        Called from the writer's thread while requests count on the event loop: the set of changed minutes is
        swapped out whole, then only read."""
        changed, self._changed = self._changed, set()
        return {
            minute: {**counts, "latency": list(counts["latency"]), "ttft": list(counts["ttft"])}
            for minute in changed
            if (counts := self._minutes.get(minute)) is not None
        }


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram ((upper bound, count) pairs, sorted), interpolated in its bucket."""
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return lower_bound
            share = (target - lower_count) / (count - lower_count) if count > lower_count else 0.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _cumulative(counts: list[int]) -> list[tuple[float, float]]:
    return list(zip(BUCKETS, map(float, accumulate(counts)), strict=True))


def _summary(total: dict[str, Any]) -> dict[str, Any]:
    requests = sum(total[outcome] for outcome in OUTCOMES)
    return {
        "requests": requests,
        **{outcome: total[outcome] for outcome in OUTCOMES},
        "server_error_rate": total["server_error"] / requests if requests else 0.0,
        "disconnect_rate": total["disconnected"] / requests if requests else 0.0,
        **{
            f"{histogram}_p{round(q * 100)}_seconds": quantile(_cumulative(total[histogram]), q)
            for histogram in ("latency", "ttft")
            for q in (0.5, 0.95, 0.99)
        },
    }


def _merged(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total = empty_minute()
    for counts in rows:
        for outcome in OUTCOMES:
            total[outcome] += int(counts.get(outcome, 0))
        for histogram in ("latency", "ttft"):
            total[histogram] = [a + int(b) for a, b in zip(total[histogram], counts[histogram], strict=True)]
    return total


def recent(rows: Iterable[tuple[int, dict[str, Any]]], now_minute: int) -> dict[str, Any]:
    """From (minute, counts) rows of every gateway: ``windows``, the last 1, 5 and 15 minutes (window ``n`` sums
    the current minute so far and the n - 1 before it), and ``minutes``, each of the last 15 minutes on its own
    (``minute``: its start, UTC epoch seconds) for the page's chart."""
    by_minute: dict[int, list[dict[str, Any]]] = {}
    for minute, counts in rows:
        by_minute.setdefault(minute, []).append(counts)
    span = max(WINDOWS_MINUTES)
    in_window = {
        width: [c for m, cs in by_minute.items() if now_minute - width < m <= now_minute for c in cs]
        for width in WINDOWS_MINUTES
    }
    return {
        "windows": [{"minutes": width, **_summary(_merged(in_window[width]))} for width in WINDOWS_MINUTES],
        "minutes": [
            {"minute": minute * 60, **_summary(_merged(by_minute.get(minute, [])))}
            for minute in range(now_minute - span + 1, now_minute + 1)
        ],
    }
