"""The documentation's reference pages, rendered from the code at every build (an MkDocs hook, named in
``mkdocs.yml``): the HTTP API from the app's own OpenAPI schema (every ``/v1`` and ``/admin/v1`` route), the
settings from the pydantic-settings classes (name, environment variable, type, default, description) and the
command line from the typer app's commands and options. Nothing here is copied into ``docs/``: the pages exist
only in the build, so they cannot drift from the code.

``python docs_hooks/reference.py DIR`` writes the three pages into DIR (to read them without building the site)."""

from __future__ import annotations

import functools
import json
import re
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

# The code of this checkout, whichever checkout the environment's editable install points at.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

API_PREFIXES = ("/v1/", "/admin/v1/")
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
PAGES = {"reference/api.md": "api_page", "reference/settings.md": "settings_page", "reference/cli.md": "cli_page"}
GENERATED = "*Generated from the code at build time (`docs_hooks/reference.py`); edit the code, not this page.*"


def cell(text: object) -> str:
    """``text`` fit for one Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


# --- the HTTP API --------------------------------------------------------------------------------------------------


@functools.cache
def openapi_schema() -> dict[str, Any]:
    """The gateway's OpenAPI schema, from an app that is built but never started (no engine, no database)."""
    from engine.settings import EngineSettings
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(data_dir=Path("/nonexistent"), admin_key="docs-" + "0" * 16)
    return create_app(settings, EngineSettings()).openapi()


def schema_anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def route_anchor(method: str, path: str) -> str:
    """The API page's anchor of one route (``post-v1-files-file_id-content``), what the guides link to."""
    return re.sub(r"[^a-z0-9_]+", "-", f"{method} {path}".lower()).strip("-")


def type_of(schema: Mapping[str, Any]) -> str:
    """A JSON schema's type in a few words; component schemas link to their section."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{schema_anchor(name)})"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return " or ".join(type_of(option) for option in schema[union])
    if "allOf" in schema:
        return " and ".join(type_of(part) for part in schema["allOf"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return "array of " + type_of(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "object of " + type_of(schema["additionalProperties"])
    if kind == "null":
        return "null"
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def bounds_of(schema: Mapping[str, Any]) -> str:
    """A schema's bounds (lengths, ranges, pattern), the union's branches included."""
    words = []
    for key, label in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in schema:
            words.append(f"{label} {schema[key]}")
    for key, label in (("minLength", "min length"), ("maxLength", "max length"), ("maxItems", "max items")):
        if key in schema:
            words.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        words.append(f"pattern `{schema['pattern']}`")
    for option in schema.get("anyOf", []):
        words.append(bounds_of(option))
    return ", ".join(word for word in words if word)


def field_rows(schema: Mapping[str, Any]) -> Iterator[str]:
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        about = " ".join(part for part in (prop.get("description", ""), bounds_of(prop)) if part)
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        yield (
            f"| `{name}` | {cell(type_of(prop))} | {'yes' if name in required else ''} | {cell(default)} "
            f"| {cell(about)} |"
        )


def operation_section(path: str, method: str, operation: Mapping[str, Any]) -> Iterator[str]:
    yield f"### `{method.upper()} {path}` {{#{route_anchor(method, path)}}}"
    yield ""
    yield f"**{operation.get('summary', '')}**"
    yield ""
    if operation.get("description"):
        yield operation["description"]
        yield ""
    parameters = operation.get("parameters", [])
    if parameters:
        yield "| parameter | in | type | required | description |"
        yield "|---|---|---|---|---|"
        for parameter in parameters:
            schema = parameter.get("schema", {})
            about = " ".join(p for p in (parameter.get("description", ""), bounds_of(schema)) if p)
            required = "yes" if parameter.get("required") else ""
            yield (
                f"| `{parameter['name']}` | {parameter['in']} | {cell(type_of(schema))} | {required} | {cell(about)} |"
            )
        yield ""
    for content_type, content in operation.get("requestBody", {}).get("content", {}).items():
        yield f"Request body (`{content_type}`): {type_of(content.get('schema', {}))}"
        yield ""
    yield "| status | answer |"
    yield "|---|---|"
    for status, response in operation.get("responses", {}).items():
        bodies = [
            f"`{content_type}` {type_of(content.get('schema', {}))}"
            for content_type, content in response.get("content", {}).items()
        ]
        yield f"| {status} | {cell(' '.join([response.get('description', ''), *bodies]))} |"
    yield ""


def api_page() -> str:
    schema = openapi_schema()
    lines = [
        "# HTTP API",
        "",
        GENERATED,
        "",
        "Every `/v1` route (a tenant's API key) and `/admin/v1` route (the admin key), as the gateway's "
        "`/openapi.json` documents them; a running gateway also serves them at `/docs` and `/redoc`. Every "
        "refusal answers OpenAI's error shape ([ErrorResponse](#schema-errorresponse)).",
        "",
    ]
    groups = {
        "/v1/": "## The OpenAI API (`/v1`) {#openai-api}",
        "/admin/v1/": "## The operator's API (`/admin/v1`) {#admin-api}",
    }
    for prefix, heading in groups.items():
        lines += [heading, ""]
        for path, operations in schema["paths"].items():
            if not path.startswith(prefix):
                continue
            for method in HTTP_METHODS:
                if method in operations:
                    lines += operation_section(path, method, operations[method])
    lines += ["## Schemas", ""]
    for name, component in sorted(schema["components"]["schemas"].items()):
        lines += [f"### {name} {{#{schema_anchor(name)}}}", ""]
        if component.get("description"):
            lines += [component["description"], ""]
        if component.get("properties"):
            lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
            lines += field_rows(component)
        else:
            lines.append(f"{type_of(component)} {bounds_of(component)}".strip())
        lines.append("")
    return "\n".join(lines)


# --- settings ------------------------------------------------------------------------------------------------------


def settings_classes() -> list[tuple[str, type[BaseSettings], str]]:
    """Each settings class with a heading and what it covers, its own fields only (shared ones listed once)."""
    from engine.settings import EngineSettings, SharedSettings
    from engine.upstream.settings import UpstreamSettings
    from gateway.settings import GatewaySettings

    return [
        ("Shared", SharedSettings, "Read by every part of LLMaaS alike."),
        ("Gateway", GatewaySettings, "The HTTP server: tenants, limits, the ledger, fine-tuning, evals, webhooks."),
        ("Engine", EngineSettings, "How the models are found and how vLLM runs them."),
        ("Upstream", UpstreamSettings, "The upstream backend (`LLMAAS_ENGINE=upstream`): vLLM servers."),
    ]


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: ``int | None``, ``list[str]``, ``one of "a", "b"``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return str(getattr(annotation, "__name__", annotation))


def default_of(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{str(value).replace(str(Path.home()), '~')}`"
    if isinstance(value, BaseSettings):
        return "(below)"
    return f"`{json.dumps(value, default=str)}`"


def settings_page() -> str:
    lines = [
        "# Settings",
        "",
        GENERATED,
        "",
        "Every setting is an environment variable (pydantic-settings): lists are comma-separated, mappings JSON. "
        "A value the class refuses stops the start with the setting's name. The guides say how the settings "
        "work together.",
        "",
    ]
    classes = settings_classes()
    shared = set(classes[0][1].model_fields)
    for heading, settings_class, about in classes:
        prefix = settings_class.model_config.get("env_prefix", "")
        own = {
            name: info
            for name, info in settings_class.model_fields.items()
            if (settings_class is classes[0][1] or name not in shared)
            and not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings))
        }
        lines += [f"## {heading}", "", about, "", "| environment variable | type | default | description |"]
        lines.append("|---|---|---|---|")
        for name, info in own.items():
            env = f"{prefix}{name}".upper()
            lines.append(
                f"| `{env}` | {cell(type_name(info.annotation))} | {cell(default_of(info))} "
                f"| {cell(info.description or '')} |"
            )
        lines.append("")
    return "\n".join(lines)


# --- the command line ----------------------------------------------------------------------------------------------


def commands(group: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """Every command under ``group`` (typer's own click), depth first, each with its context."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        child = command.context_class(command, info_name=name, parent=ctx)
        yield command, child
        if hasattr(command, "list_commands"):
            yield from commands(command, child)


def command_section(command: Any, ctx: Any) -> Iterator[str]:
    path = ctx.command_path
    yield f"## `{path}`"
    yield ""
    yield "```text"
    yield f"{path} {' '.join(command.collect_usage_pieces(ctx))}"
    yield "```"
    yield ""
    if command.help:
        yield command.help.strip()
        yield ""
    params = [param for param in command.get_params(ctx) if param.name != "help" and not param.hidden]
    if not params:
        return
    yield "| argument or option | default | description |"
    yield "|---|---|---|"
    for param in params:
        names, about = param.get_help_record(ctx) or (param.name, "")
        default = f"`{param.default}`" if param.default not in (None, (), False) else ""
        yield f"| `{cell(names)}` | {cell(default)} | {cell(about)} |"
    yield ""


def cli_page() -> str:
    from gateway.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="llmaas")
    lines = ["# Command line", "", GENERATED, "", root.help or "", ""]
    lines += [
        "The management commands work on the database directly (`LLMAAS_DATABASE_URL` or the data dir's "
        "SQLite), so they need no running server; every command reads the [settings](settings.md).",
        "",
    ]
    for command, child in commands(root, ctx):
        if not hasattr(command, "list_commands"):
            lines += command_section(command, child)
    return "\n".join(lines)


# --- the hook ------------------------------------------------------------------------------------------------------


def render(page: str) -> str:
    return str(globals()[PAGES[page]]()) + "\n"


# A route as the guides name one: `GET /v1/files/{id}`, `GET/POST/DELETE /v1/evals/{id}`, `GET /admin/v1/usage?...`.
METHODS = r"(?:GET|POST|PUT|PATCH|DELETE)"
ROUTE_MENTION = re.compile(rf"`({METHODS}(?:/{METHODS})*) (/(?:admin/)?v1/(?:[^`?\s{{]|\{{[^}}]*\}})*)")


@functools.cache
def routes() -> frozenset[tuple[str, str]]:
    """Every (method, path with its parameters as ``{}``) the gateway serves."""
    return frozenset(
        (method.upper(), re.sub(r"\{[^}]*\}", "{}", path))
        for path, operations in openapi_schema()["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    )


def unknown_routes(markdown: str) -> list[str]:
    """The routes ``markdown`` names in full (no ``...``) that the gateway does not serve."""
    known, unknown = routes(), []
    for mention in ROUTE_MENTION.finditer(markdown):
        path = re.sub(r"\{[^}]*\}", "{}", mention[2])
        if "..." in path:
            continue
        unknown += [f"{method} {mention[2]}" for method in mention[1].split("/") if (method, path) not in known]
    return unknown


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs: a guide that names a route the gateway does not serve fails the build (the reference pages are the
    code's own word; a guide that drifted from it would say something false)."""
    from mkdocs.exceptions import PluginError

    unknown = unknown_routes(markdown)
    if unknown:
        raise PluginError(f"{page.file.src_path} names routes the gateway does not serve: {', '.join(unknown)}")
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """MkDocs: the reference pages added to the build, rendered from the code (never written into docs/)."""
    from mkdocs.structure.files import File

    for page in PAGES:
        files.append(File.generated(config, page, content=render(page)))
    return files


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for page in PAGES:
        (out / page).parent.mkdir(parents=True, exist_ok=True)
        (out / page).write_text(render(page))
