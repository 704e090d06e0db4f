"""Who runs next when the engine is saturated: priority classes (``interactive`` before ``batch``) and, within a
class, each tenant's weighted fair share. A key's requests wait in its class (``api_keys.priority_class``); the
Batch API's requests always wait in ``batch``.

``gateway.scheduling.order`` decides the order (start-time fair queuing, or first come first served);
``gateway.scheduling.memory`` holds one gateway's waiting requests over its own engine, ``gateway.scheduling.redis``
those of every gateway sharing Redis and a replica pool; ``gateway.scheduling.slots`` is what they share (the
request's demand, its ticket, the refusals)."""

from typing import Literal

PriorityClass = Literal["interactive", "batch"]
PRIORITY_CLASSES: tuple[PriorityClass, ...] = ("interactive", "batch")
"""Highest first: a waiting request of a class is admitted before any of the classes after it."""


def class_rank(priority_class: PriorityClass) -> int:
    """0 for the highest class."""
    return PRIORITY_CLASSES.index(priority_class)
