"""A kernel build's lock (``engine/kernels/__init__.py``): torch's JIT build waits forever on a lock file that a
process killed mid-build left behind, so a library load first waits for the lock itself — returning at once where
there is none, when a live builder removes it, and removing it once it is ``STALE_LOCK_S`` old."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import engine.kernels as kernels


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "LOCK_POLL_S", 0.02)


def test_no_lock_no_wait(tmp_path: Path) -> None:
    start = time.monotonic()
    kernels._await_build_lock(tmp_path)
    assert time.monotonic() - start < 0.5


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - kernels.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    kernels._await_build_lock(tmp_path)
    assert not lock.exists()


def test_a_live_builders_lock_is_waited_for(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    builder = threading.Timer(0.3, lock.unlink)
    builder.start()
    start = time.monotonic()
    kernels._await_build_lock(tmp_path)
    assert time.monotonic() - start >= 0.25 and not lock.exists()
    builder.join()


def test_a_live_lock_is_never_removed_before_it_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "lock"
    lock.touch()
    monkeypatch.setattr(kernels, "STALE_LOCK_S", 0.4)  # the lock turns stale while waited for
    start = time.monotonic()
    kernels._await_build_lock(tmp_path)
    assert time.monotonic() - start >= 0.35 and not lock.exists()
