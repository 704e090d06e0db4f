"""Slow and greedy connections, against one real gateway process (uvicorn as ``llmaas serve`` runs it, the instant
fake engine) with small limits: a body that trickles in is cut with a 408, headers that never complete and
silent or idle connections are closed, oversized headers get a 431, and one address may hold only so many
connections at once."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.support import MODEL
from tests.support.gateway_process import fake_gateway
from tests.support.tenants import tenant_key

CAP = 25
EOF_WITHIN = 15.0
"""Generous: each limit here is 1-2 s; this only tells "cut" from "held forever"."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fake_gateway(
        tmp_path_factory.mktemp("connections"),
        body_read_timeout_seconds=1,
        header_read_timeout_seconds=2,
        keep_alive_timeout_seconds=1,
        max_header_bytes=8192,
        max_connections_per_address=CAP,
    ) as running:
        yield running.base


@pytest.fixture(scope="module")
def key(gateway: str) -> str:
    return tenant_key(gateway, "slow")[1]


def connect(base: str, stack: ExitStack) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = stack.enter_context(socket.create_connection((host, int(port)), timeout=EOF_WITHIN))
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: test", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_twenty_half_sent_bodies_are_cut_with_408(gateway: str, key: str) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = head(
        "/v1/chat/completions",
        authorization=f"Bearer {key}",
        **{"content-type": "application/json", "content-length": str(len(body))},
    )
    with ExitStack() as stack:
        sockets = [connect(gateway, stack) for _ in range(20)]
        for sock in sockets:
            sock.sendall(request + body[:10])  # and then nothing more
        answers = [read_to_eof(sock) for sock in sockets]
    for answer in answers:
        assert status_of(answer) == 408
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert httpx.get(f"{gateway}/health").status_code == 200
    # A body that arrives in time is untouched.
    with httpx.Client(base_url=gateway, headers={"authorization": f"Bearer {key}"}) as client:
        assert client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        ).is_success


def test_a_body_that_trickles_on_after_an_early_answer_is_cut_too(gateway: str) -> None:
    """No key: the 401 goes out before the body is read, so the app's body deadline never runs; the connection's
    does."""
    request = head("/v1/chat/completions", **{"content-type": "application/json", "content-length": "1000000"})
    with ExitStack() as stack:
        sock = connect(gateway, stack)
        sock.sendall(request)
        sock.settimeout(EOF_WITHIN)
        assert sock.recv(65536).startswith(b"HTTP/1.1 401")
        started, closed = time.monotonic(), False
        # The body deadline here is 1 s (+1 s of grace): cut within 6 s, where nothing else would cut it so soon.
        while not closed and time.monotonic() - started < 6:  # a byte a second until the server closes
            try:
                sock.send(b" ")
                time.sleep(1)
                closed = sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
            except BlockingIOError:
                pass
            except OSError:  # reset: closed
                closed = True
        assert closed and time.monotonic() - started < 6


def test_headers_that_never_complete_and_silent_connections_are_closed(gateway: str) -> None:
    with ExitStack() as stack:
        trickling = [connect(gateway, stack) for _ in range(20)]
        silent = [connect(gateway, stack) for _ in range(3)]
        for sock in trickling:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n")
        time.sleep(0.5)
        for sock in trickling:
            sock.sendall(b"x-more: still coming\r\n")  # bytes keep coming, the deadline stays
        assert all(read_to_eof(sock) == b"" for sock in [*trickling, *silent])


def test_an_idle_keep_alive_connection_is_closed(gateway: str) -> None:
    with ExitStack() as stack:
        sock = connect(gateway, stack)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        answer = read_to_eof(sock)  # answered, then closed once idle
    assert status_of(answer) == 200


def test_oversized_headers_are_431(gateway: str) -> None:
    with ExitStack() as stack:
        sock = connect(gateway, stack)
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\n" + b"x-filler: " + b"a" * 9000 + b"\r\n\r\n")
        answer = read_to_eof(sock)
    assert status_of(answer) == 431
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_header_fields_too_large"


def test_one_address_may_hold_only_so_many_connections(gateway: str) -> None:
    with ExitStack() as stack:
        held = [connect(gateway, stack) for _ in range(CAP)]
        excess = connect(gateway, stack)
        answer = read_to_eof(excess)  # answered and closed at once, before it sends anything
        assert status_of(answer) == 429
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "too_many_connections" and str(CAP) in error["message"]
        for sock in held:
            sock.close()
        deadline = time.monotonic() + EOF_WITHIN  # the server sees the closes a moment later
        while httpx.get(f"{gateway}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
