"""The documentation site builds offline with ``mkdocs build --strict`` (a broken internal link, a missing anchor or
a page left out of the navigation fails it), its reference pages name every route, setting and command the code
has, it loads nothing from the internet and reads (and searches) from disk in Debian's headless Chromium, and the
README's links point at files that exist."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from playwright.sync_api import Browser

from engine.settings import EngineSettings
from engine.upstream.settings import UpstreamSettings
from gateway.app import create_app
from gateway.cli import app as cli_app
from gateway.settings import GatewaySettings
from tests.support import ADMIN_KEY, REPO


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def text_of(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_api_reference_has_every_v1_and_admin_route_of_the_openapi_schema(site: Path) -> None:
    schema = create_app(GatewaySettings(data_dir=Path("/nonexistent"), admin_key=ADMIN_KEY), EngineSettings()).openapi()
    page = text_of(site / "reference" / "api.html")
    operations = [
        f"{method.upper()} {path}"
        for path, methods in schema["paths"].items()
        if path.startswith(("/v1/", "/admin/v1/"))
        for method in methods
    ]
    assert len(operations) > 50
    missing = [operation for operation in operations if operation not in page]
    assert not missing, missing
    assert "ChatCompletionRequest" in page


@pytest.mark.parametrize(
    ("sentence", "error"),
    [
        (
            "Archive a tenant with `POST /admin/v1/tenants/{tenant}/archive`.",
            "guides/tenants-and-keys.md names routes the gateway does not serve: "
            "POST /admin/v1/tenants/{tenant}/archive",
        ),
        (
            "[Archive a tenant](../reference/api.md#post-admin-v1-tenants-tenant-archive).",
            "does not contain an anchor '#post-admin-v1-tenants-tenant-archive'",
        ),
    ],
    ids=["a-route-it-does-not-serve", "a-link-to-a-route-it-does-not-serve"],
)
def test_a_guide_naming_a_route_the_gateway_does_not_serve_fails_the_build(
    tmp_path: Path, sentence: str, error: str
) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    guide = docs / "guides" / "tenants-and-keys.md"
    guide.write_text(guide.read_text() + f"\n{sentence}\n")
    config = (REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("docs_hooks/reference.py", str(REPO / "docs_hooks" / "reference.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode != 0
    assert error in built.stdout + built.stderr


def test_the_guides_link_their_routes_to_the_api_reference(site: Path) -> None:
    page = (site / "guides" / "openai-api.html").read_text()
    assert 'href="../reference/api.html#post-v1-chat-completions"' in page
    assert 'id="post-v1-chat-completions"' in (site / "reference" / "api.html").read_text()


def test_the_settings_reference_has_every_setting(site: Path) -> None:
    page = text_of(site / "reference" / "settings.html")
    expected = [f"LLMAAS_{name.upper()}" for name in [*GatewaySettings.model_fields, *EngineSettings.model_fields]]
    expected += [f"LLMAAS_UPSTREAM_{name.upper()}" for name in UpstreamSettings.model_fields]
    missing = [name for name in expected if name not in page and name != "LLMAAS_UPSTREAM"]
    assert not missing, missing
    assert "postgresql+psycopg://user@host/db" in page  # a description, rendered from the code


def test_the_cli_reference_has_every_command_and_option(site: Path) -> None:
    page = text_of(site / "reference" / "cli.html")
    root = typer.main.get_command(cli_app)
    ctx = root.context_class(root, info_name="llmaas")
    for name in root.list_commands(ctx):
        command = root.get_command(ctx, name)
        subcommands = command.list_commands(ctx) if hasattr(command, "list_commands") else [""]
        for sub in subcommands:
            assert f"llmaas {name} {sub}".strip() in page
    assert "--monthly-tokens" in page and "--key-manager" in page


def test_the_site_reads_offline(site: Path) -> None:
    for page in site.rglob("*.html"):
        # No script, style sheet or font from elsewhere (links to other sites are fine: a reader follows them).
        remote = re.findall(r"<(?:script|link)[^>]+(?:src|href)=\"(?:https?:)?//[^\"]+", page.read_text())
        assert not remote, (page, remote)
    # The offline plugin's search index is a script, so search works from file:// too.
    assert (site / "search" / "search_index.js").exists()
    assert (site / "console" / "console-usage.png").exists()


def test_the_readme_links_point_at_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(targets) > 10
    missing = [target for target in targets if not (REPO / target).exists()]
    assert not missing, missing
    assert len(readme.splitlines()) <= 150


def test_the_built_site_reads_and_searches_from_disk_in_a_browser(site: Path, browser: Browser) -> None:
    """Opened from file:// (no server, no network), as `make docs` leaves it: the home page, search (the offline
    plugin's index), a guide and the API reference. ``LLMAAS_SITE_SCREENSHOTS=<dir>`` saves what it shows."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    remote: list[str] = []
    page.on("request", lambda request: None if request.url.startswith("file:") else remote.append(request.url))
    shots = os.environ.get("LLMAAS_SITE_SCREENSHOTS")

    def shot(name: str) -> None:
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(shots) / f"{name}.png"))

    page.goto((site / "index.html").as_uri())
    assert page.title().startswith("LLMaaS")
    shot("site-home")
    page.keyboard.press("/")  # Material's search shortcut
    page.keyboard.type("rotating the admin key")  # typed: the search listens to keys, not to a filled value
    result = page.locator(".md-search-result__item").first
    result.wait_for(timeout=15_000)
    assert "admin key" in page.locator(".md-search-result").inner_text().lower()
    shot("site-search")
    page.goto((site / "guides" / "operations.html").as_uri())
    page.get_by_role("link", name="Scaling out").first.click()
    page.wait_for_url("**/guides/scaling-out.html")
    page.goto((site / "guides" / "quotas-and-billing.html").as_uri())
    shot("site-guide")
    page.goto((site / "reference" / "api.html").as_uri() + "#schema-chatcompletionrequest")
    assert page.locator("#schema-chatcompletionrequest").is_visible()
    page.goto((site / "reference" / "api.html").as_uri())
    shot("site-api-reference")
    page.close()
    assert not remote, remote
