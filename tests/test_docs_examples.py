"""Every example in the documentation that calls the API is either run here against a real gateway (the suite's
``llmaas serve`` on the real model: the examples' answers come from it) or says why not, and what it shows still
works. A page's blocks run in order, as a reader would paste them: the Python ones in one namespace, the shell
ones in bash with the operator's environment (``$URL``, ``$ADMIN``, the gateway's data dir for ``llmaas``), and
a ``curl`` that fails on an error status. The address, key and tenant names of the docs are replaced by the
test's own (``tests/support/doc_examples.py``), and the files they open (``train.jsonl``, ``test.jsonl``, ...) are
small ones of the test's, in the Python examples' working directory. The examples that train a model run in
``make test-slow`` (a page's ordinary examples run there again, in order around them)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.finetune_data import pirate_jsonl
from tests.support import ADMIN_KEY, MODEL, REPO
from tests.support.doc_examples import PAGES, RUNNABLE, Example, examples
from tests.support.gateway_process import gateway_env
from tests.support.tenants import create_tenant, openai_client

DOCS_BASE = "http://127.0.0.1:8000"
DOCS_KEY = '"sk-..."'
# A shell example's curl fails on an error status, as a reader would notice one.
BASH_PRELUDE = 'curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'
MAX_TOKENS = 96
RUN_PAGES = [page for page in PAGES if any(example.run for example in examples(page))]
SLOW_PAGES = [page for page in PAGES if any(example.slow for example in examples(page))]


def chat_line(question: str, answer: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def jsonl(rows: list[dict[str, object]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# The files the examples open, as a reader would have them: small, so that a job trains in seconds.
READER_FILES = {
    "train.jsonl": pirate_jsonl().decode(),
    "intents.jsonl": jsonl(
        [chat_line("My card was charged twice. Which team?", "billing")] * 6
        + [chat_line("The app crashes at start. Which team?", "tech")] * 6
    ),
    "orders.jsonl": jsonl([chat_line(f"Order {n} ships to Lyon. Order number?", str(n)) for n in range(40100, 40112)]),
    "pairs.jsonl": jsonl(
        [
            {
                "input": {"messages": [{"role": "user", "content": question}]},
                "preferred_output": [{"role": "assistant", "content": answer.upper()}],
                "non_preferred_output": [{"role": "assistant", "content": answer}],
            }
            for question, answer in [
                ("What is the capital of France?", "The capital of France is Paris."),
                ("What colour is snow?", "Snow is white."),
                ("How many legs does a dog have?", "A dog has four legs."),
                ("What is the opposite of up?", "The opposite of up is down."),
            ]
        ]
    ),
    "test.jsonl": jsonl(
        [
            {"item": {"text": f"{text} Which team?", "label": label}}
            for text, label in [
                ("I was billed twice this month.", "billing"),
                ("The page shows an error 500.", "tech"),
            ]
        ]
    ),
    "requests.jsonl": jsonl(
        [
            {
                "custom_id": f"question-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 8},
            }
            for n, question in enumerate(["What is the capital of Peru?", "Name a colour."])
        ]
    ),
}


def test_every_example_that_calls_the_api_is_marked_run_or_skip_with_a_reason() -> None:
    unmarked, unrunnable, bare = [], [], []
    for page in PAGES:
        found = examples(page)
        for example in found:
            if example.calls_api and not example.marked:
                unmarked.append(example.where)
            if (example.run or example.slow) and example.lang not in RUNNABLE:
                unrunnable.append(f"{example.where} ({example.lang or 'no language'})")
            reason = example.skip_reason or example.slow_reason
            if reason is not None and len(reason.split()) < 3:
                bare.append(example.where)
        marks = len(re.findall(r"^<!-- example: .*-->[ \t]*$", page.read_text(), re.M))
        assert marks == sum(example.marked for example in found), f"{page}: a mark with no code block after it"
    assert not unmarked, (
        f"mark these <!-- example: run -->, <!-- example: slow: why --> or <!-- example: skip: why -->: {unmarked}"
    )
    assert not unrunnable, f"only python and bash examples run: {unrunnable}"
    assert not bare, f"say why an example is not run: {bare}"
    assert RUN_PAGES, "no example is run"


def adapted(example: Example, base: str, key: str, tenant: str) -> str:
    """The example as it runs here: our gateway, our key, the page's tenant name, and the CLI of the code under test
    (``.venv/bin/llmaas`` may be another checkout's where the virtual environment is shared)."""
    code = example.code.replace(DOCS_BASE, base).replace(DOCS_KEY, f'"{key}"')
    code = code.replace(".venv/bin/llmaas", f"{sys.executable} -m gateway.cli")
    return re.sub(r"\bacme\b", tenant, code)


def run_python(example: Example, code: str, namespace: dict[str, object]) -> None:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, example.where, "exec"), namespace)
    except Exception as error:
        raise AssertionError(f"{example.where} failed: {error!r}\n{out.getvalue()[-2000:]}") from error


def run_bash(example: Example, code: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", BASH_PRELUDE + code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout[-2000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"{example.where} exited {done.returncode}:\n{output}"


PAGE_RUNS = [
    *(pytest.param(page, False, id=str(page.relative_to(REPO))) for page in RUN_PAGES),
    *(
        pytest.param(page, True, id=f"{page.relative_to(REPO)} with its training examples", marks=pytest.mark.slow)
        for page in SLOW_PAGES
    ),
]


@pytest.mark.parametrize(("page", "with_slow"), PAGE_RUNS)
def test_the_examples_of_a_page_run_against_a_real_gateway(
    page: Path,
    with_slow: bool,
    server: str,
    admin: httpx.Client,
    server_data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Open-ended requests (a story, a joke) are capped, as the tenant quota `max_tokens_cap` caps them: the
    # examples ask the real model and stay quick.
    tenant, key = create_tenant(admin, "docs", max_tokens_cap=MAX_TOKENS)
    page_tenant = f"acme-{os.urandom(3).hex()}"
    # `OpenAI()` with no arguments, as the docs' scripts build it, reads these.
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", key)
    for name, content in READER_FILES.items():
        (tmp_path / name).write_text(content)
    monkeypatch.chdir(tmp_path)
    env = gateway_env(server_data_dir, ADMIN_KEY) | {"URL": server, "ADMIN": ADMIN_KEY}
    namespace: dict[str, object] = {"__name__": "__docs__", "client": openai_client(server, key)}
    ran = 0
    try:
        for example in examples(page):
            if not (example.run or (with_slow and example.slow)):
                continue
            code = adapted(example, server, key, page_tenant)
            if RUNNABLE[example.lang] == "python":
                run_python(example, code, namespace)
            else:
                run_bash(example, code, env)
            ran += 1
    finally:
        # The page's tenants go, with whatever their examples started (a fine-tuning job is cancelled).
        for name in (tenant["id"], page_tenant):
            admin.delete(f"/admin/v1/tenants/{name}")
    assert ran
