"""The instruction-set paths of one of our run-time-dispatched kernel libraries (``engine.kernels.int8``,
``engine.kernels.activation``) as pytest parameters: each path the library has, skipped with the reason on a CPU
that lacks what it needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest


def path_params(paths: Iterable[str], supported: Iterable[str], needs: Mapping[str, str]) -> list[object]:
    """One parameter per name of ``paths``; those not in ``supported`` skipped, naming ``needs[name]``."""
    runnable = set(supported)
    return [
        pytest.param(
            name,
            marks=pytest.mark.skipif(name not in runnable, reason=f"this CPU lacks {needs[name]} for the {name} path"),
        )
        for name in paths
    ]
