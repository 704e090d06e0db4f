"""A model-server stand-in that fails on command, for the failover tests: ``bench/fake_upstream.py``'s replica
(its completions, checks and stats) whose next completions misbehave as a test tells it (``POST /fault``), in
its own process. The faults, each after ``after`` tokens of the answer went out:

- ``reset``: the connection is cut mid-body (the response never ends);
- ``hang``: it goes silent, the connection open (before the headers where ``after`` is 0);
- ``garbage``: an event that is not JSON, then the rest of the answer;
- ``error``: a 500 before anything (``after`` ignored).

Run as ``python -m tests.support.faulty_upstream --port P --root MODEL_DIR [--seconds-per-token S]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.fake_upstream import TOKEN_ID, FakeUpstream, Receive, Send, _error, _event, _json
from tests.support import MODEL, REPO
from tests.support.gateway_process import wait_ready

FAULTS = ("reset", "hang", "garbage", "error")


class CutOff(Exception):
    """Raised mid-response: the server drops the connection without ending the body."""


@dataclass
class Fault:
    mode: str
    after: int
    count: int
    """Completions it applies to (then it is spent)."""


class FaultyUpstream(FakeUpstream):
    def __init__(self, root: str, seconds_per_token: float) -> None:
        super().__init__(MODEL, root, 2048, 2, seconds_per_token, block_size=128)
        self.fault: Fault | None = None
        self.faulted = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/fault":
            message = await receive()
            fault = json.loads(message.get("body") or b"{}")
            self.fault = Fault(fault["mode"], fault.get("after", 0), fault.get("count", 1)) if fault else None
            await _json(send, 200, {"faulted": self.faulted})
            return
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/faulted":
            await _json(send, 200, {"faulted": self.faulted})
            return
        await super().__call__(scope, receive, send)

    async def complete(self, request: dict[str, Any], send: Send) -> None:
        fault = self.fault
        if fault is None or fault.count <= 0:
            await super().complete(request, send)
            return
        fault.count -= 1
        self.faulted += 1
        if fault.mode == "error":
            await _json(send, 500, _error("the replica failed"))
            return
        if fault.mode == "hang" and fault.after == 0:
            await asyncio.sleep(3600)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(fault.after):
            await asyncio.sleep(self.seconds_per_token)
            choice = {"index": 0, "text": "x", "token_ids": [TOKEN_ID], "finish_reason": None, "logprobs": None}
            await _event(send, {"id": "cmpl-fault", "object": "text_completion", "choices": [choice]})
        if fault.mode == "hang":
            await asyncio.sleep(3600)
        if fault.mode == "reset":
            raise CutOff("cut off mid-response, as the test asked")
        await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@dataclass
class FaultyReplica:
    """One running in its own process: its URL, and the commands a test gives it."""

    url: str
    proc: subprocess.Popen[bytes]

    def inject(self, mode: str, after: int = 0, count: int = 1) -> None:
        """Its next ``count`` completions fail as ``mode`` says, after ``after`` tokens."""
        assert mode in FAULTS
        httpx.post(f"{self.url}/fault", json={"mode": mode, "after": after, "count": count}).raise_for_status()

    def faulted(self) -> int:
        """Completions it failed so far."""
        count: int = httpx.get(f"{self.url}/faulted").json()["faulted"]
        return count


@contextmanager
def faulty_upstream(port: int, model_dir: Path, log: Path, seconds_per_token: float) -> Iterator[FaultyReplica]:
    """Serving ``model_dir``'s model on ``port`` until the block ends, then killed."""
    command = [sys.executable, "-m", "tests.support.faulty_upstream", "--port", str(port), "--root", str(model_dir)]
    command += ["--seconds-per-token", str(seconds_per_token)]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log, seconds=30)
        yield FaultyReplica(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--seconds-per-token", type=float, default=0.01)
    args = parser.parse_args()
    app = FaultyUpstream(args.root, args.seconds_per_token)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
