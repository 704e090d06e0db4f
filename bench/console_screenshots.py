"""Refresh the console's screenshots (``docs/console/*.png``, the console guide's) from a seeded gateway in
headless Chromium.

    python bench/console_screenshots.py [--out docs/console] [--chromium /usr/bin/chromium]

A gateway in front of the instant fake engine (``bench/fake_gateway.py``: every answer is "The quick brown fox...")
on a fresh data dir; seeded through the admin and OpenAI APIs as an operator and tenants would (three tenants with
prices and budgets, a month's worth of requests on two keys, one with budgets of its own, an eval with two runs, an
uploaded sample training file and a job). No worker trains beside it: this script plays one for the fine-tuning
page, writing a job's metrics events into the database as a worker's progress would (``adapters.job_progress``), so
the page has a loss curve to draw. Each page is then shot as it renders: nothing in the pictures is drawn by hand."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from playwright.sync_api import Browser, Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.jobs import add_event  # noqa: E402
from adapters.store import FineTuningJob, utcnow  # noqa: E402
from engine.settings import DEFAULT_MODEL_ID as MODEL  # noqa: E402
from gateway.bootstrap import open_database  # noqa: E402
from gateway.routes.console import STATIC_DIR  # noqa: E402
from gateway.settings import GatewaySettings  # noqa: E402
from tests.support.evals import ITEMS, completions_source, finished, make_eval  # noqa: E402
from tests.support.gateway_process import fake_gateway  # noqa: E402

ADMIN_KEY = "sk-admin-screenshots-0123456789abcdef"


def seed_tenants(admin: httpx.Client) -> dict[str, str]:
    """Three tenants and their keys; acme's is a key manager with a second key, "ci", which has budgets of its own."""
    prices = {MODEL: {"input": "0.5", "output": "1.5"}}
    keys = {}
    for name, quotas in (
        ("acme", {"requests_per_minute": 600, "monthly_token_budget": 200_000, "monthly_cost_budget": "5"}),
        ("globex", {"requests_per_minute": 120, "max_concurrent_requests": 4}),
        ("initech", {"monthly_token_budget": 50_000}),
    ):
        tenant = admin.post("/admin/v1/tenants", json={"name": name, "model_prices": prices, **quotas}).json()
        made = admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "first", "key_manager": True})
        keys[name] = made.json()["key"]
        if name == "acme":
            ci = {"name": "ci", "monthly_token_budget": 20_000, "monthly_cost_budget": "1"}
            keys["acme-ci"] = admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json=ci).json()["key"]
    return keys


def seed_usage(base: str, keys: dict[str, str]) -> None:
    for index in range(40):
        for name in ("acme", "acme-ci", "globex") if index % 3 == 0 else ("acme",):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=keys[name], max_retries=0)
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5 + index % 20
            )


def seed_evals(client: openai.OpenAI) -> None:
    """The console test's eval (``tests.support.evals``: its grades known in advance), with two runs."""
    created = make_eval(client)
    content = [{"item": item} for item in ITEMS]
    for name, tokens in (("nine tokens", 9), ("three tokens", 3)):
        source = completions_source({"type": "file_content", "content": content}, tokens)
        run = client.evals.runs.create(created.id, name=name, data_source=source)  # type: ignore[arg-type]
        finished(client, created.id, run.id)


def seed_training(client: openai.OpenAI, data_dir: Path) -> str:
    """A job on the sample file, running, with 24 steps of metrics as a worker writes them."""
    sample = (STATIC_DIR / "samples" / "chat-sft.jsonl").read_bytes()
    upload = client.files.create(file=("support.jsonl", sample), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=upload.id, suffix="support")
    database = open_database(GatewaySettings(data_dir=data_dir, admin_key=ADMIN_KEY))
    with database.sessions.begin() as session:
        row = session.get(FineTuningJob, job.id)
        assert row is not None
        row.status, row.worker_id, row.started_at, row.heartbeat_at = "running", "screenshots", utcnow(), utcnow()
        add_event(session, job.id, "Fine-tuning job started")
        for step in range(1, 25):
            loss = 0.35 + 1.9 * math.exp(-step / 6) + 0.04 * math.sin(step)
            data: dict[str, Any] = {"step": step, "total_steps": 48, "epoch": 1 + (step - 1) // 8, "train_loss": loss}
            if step % 8 == 0:
                data["valid_loss"] = loss + 0.12
            add_event(session, job.id, f"Step {step}/48: training loss={loss:.4f}", type_="metrics", data=data)
        row.heartbeat_at = utcnow()
    database.dispose()
    return job.id


def signed_in(browser: Browser, base: str, key: str, width: int = 1100, height: int = 900) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(f"{base}/console/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/admin/tenants" if key == ADMIN_KEY else "**/console/usage")
    return page


def shoot(page: Page, out: Path, name: str) -> None:
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(out / f"{name}.png")


def screenshots(browser: Browser, base: str, keys: dict[str, str], job_id: str, out: Path) -> None:
    page = signed_in(browser, base, keys["acme"])
    page.wait_for_selector("body[data-charts-drawn='true']")
    shoot(page, out, "console-usage")
    page.goto(f"{base}/console/fine-tuning")
    page.wait_for_selector("body[data-ready='true']")
    page.click(f"text={job_id}")
    page.wait_for_selector("body[data-loss-points='24']")
    shoot(page, out, "console-fine-tuning")
    page.goto(f"{base}/console/evaluations")
    page.wait_for_selector("body[data-runs-shown='2']")
    shoot(page, out, "console-evaluations")
    page.goto(f"{base}/console/playground")
    page.wait_for_selector("body[data-models-loaded='true']")
    page.fill("#max-tokens", "24")
    for message in ("Tell me about foxes.", "And about dogs?"):
        page.fill("#prompt", message)
        page.click("#send")
        page.wait_for_selector("body[data-answered='true']")
    shoot(page, out, "console-playground")
    page.close()

    phone = signed_in(browser, base, keys["acme"], width=390, height=844)
    phone.goto(f"{base}/console/keys")
    shoot(phone, out, "console-keys-phone")
    phone.close()
    newcomer = signed_in(browser, base, keys["initech"], width=1000, height=700)
    newcomer.goto(f"{base}/console/evaluations")
    newcomer.wait_for_selector("body[data-ready='true']")
    shoot(newcomer, out, "console-evaluations-empty")
    newcomer.close()

    operator = signed_in(browser, base, ADMIN_KEY, height=700)
    shoot(operator, out, "console-tenants")
    operator.click("#tenants a:text-is('acme')")
    operator.wait_for_url("**/console/admin/tenants/*")
    shoot(operator, out, "console-tenant")
    operator.goto(f"{base}/console/admin/service")
    operator.wait_for_selector("body[data-refreshed]")
    time.sleep(4)  # two more refreshes: the latency chart has points
    shoot(operator, out, "console-service")
    operator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmaas-screenshots-") as temporary:
        data_dir = Path(temporary)
        # Keys' last use written every second, not every 30: the keys pages show it.
        with fake_gateway(data_dir, admin_key=ADMIN_KEY, key_activity_flush_seconds=1) as gateway:
            base = gateway.base
            with httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60) as admin:
                keys = seed_tenants(admin)
            seed_usage(base, keys)
            acme = openai.OpenAI(base_url=f"{base}/v1", api_key=keys["acme"], max_retries=0)
            seed_evals(acme)
            job_id = seed_training(acme, data_dir)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"]
                )
                screenshots(browser, base, keys, job_id, args.out)
                browser.close()


if __name__ == "__main__":
    main()
