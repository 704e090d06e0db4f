"""Who runs next when the engine is saturated: priority classes (``interactive`` before ``batch``) and, within a
class, each tenant's weighted fair share. A key's requests wait in its class (``api_keys.priority_class``); the
Batch API's requests always wait in ``batch``."""

from typing import Literal

PriorityClass = Literal["interactive", "batch"]
PRIORITY_CLASSES: tuple[PriorityClass, ...] = ("interactive", "batch")
"""Highest first: a waiting request of a class is admitted before any of the classes after it."""
