"""The layering, checked on the source: imports go one way. ``engine`` imports neither ``adapters`` nor
``gateway``, ``adapters`` never imports ``gateway``; between the parts of ``gateway`` (its subpackages and
top-level modules) no import cycle, and the routers and the shared state sit on top: only the app's wiring
imports ``gateway.routes``, and nothing below the routers imports ``gateway.state``.

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a cycle that only the type checker
sees is still a cycle in the design."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = {"app", "bootstrap", "cli"}
"""The app's wiring and the command line: above everything else of the gateway."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """The absolute names of the modules (or their members) that ``path`` imports, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def sources(package: str) -> list[Path]:
    return [path for path in sorted((REPO / package).rglob("*.py")) if "migrations" not in path.parts]


def part_of(name: str) -> str | None:
    """The part of the gateway a module belongs to: ``gateway.tenancy.service`` -> ``tenancy``."""
    parts = name.split(".")
    if parts[0] != "gateway" or len(parts) < 2:
        return None
    part = parts[1]
    return part if (REPO / "gateway" / part).is_dir() or (REPO / "gateway" / f"{part}.py").is_file() else None


def gateway_graph() -> dict[str, set[str]]:
    """Each part of the gateway -> the other parts it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sources("gateway"):
        source = part_of(module_name(path))
        if source is None:
            continue
        graph[source]
        for name in imported(path):
            target = part_of(name)
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def test_the_gateway_has_parts_to_check() -> None:
    graph = gateway_graph()
    assert {"tenancy", "accounting", "inference", "routes", "state", "app"} <= set(graph)
    assert "tenancy" in graph["accounting"]  # the walk sees imports


def test_no_import_cycle_between_the_parts_of_the_gateway() -> None:
    try:
        tuple(TopologicalSorter(gateway_graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"an import cycle between parts of the gateway: {' -> '.join(exc.args[1])}")


def test_the_routes_and_the_shared_state_sit_on_top() -> None:
    graph = gateway_graph()
    importers = {part: {source for source, targets in graph.items() if part in targets} for part in graph}
    assert importers["routes"] <= TOP, "only the app's wiring includes the routers"
    assert importers["state"] <= TOP | {"routes"}, "the domains never import the shared state back"


@pytest.mark.parametrize(("package", "forbidden"), [("engine", ("gateway", "adapters")), ("adapters", ("gateway",))])
def test_lower_layers_never_import_higher_ones(package: str, forbidden: tuple[str, ...]) -> None:
    offending = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sources(package)
        for name in imported(path)
        if name.split(".")[0] in forbidden
    ]
    assert offending == []
