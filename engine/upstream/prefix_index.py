"""What the router remembers of each replica's prefix cache: the chained hashes of the leading token blocks of the
prompts it sent there, so a request can go where its prefix is likely cached.

A block's hash covers its tokens and, through its parent's hash, every token before it (as vLLM's prefix cache
does), so the prompt's blocks match a replica's memory from the first one until the first miss. Only full blocks
count (vLLM caches only those). Each replica's memory is bounded — at most its KV cache's block count where its
``/metrics`` says it (``vllm:cache_config_info``), and ``max_blocks`` in any case — and least recently sent blocks
go first, as in vLLM's cache; a block not sent again for ``ttl_seconds`` is forgotten (other gateways' traffic may
have evicted it meanwhile). A replica that restarts, fails its check or is ejected forgets everything
(``Replica.forget_prefixes``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.upstream.replica import Replica

DEFAULT_BLOCK_SIZE = 16
"""vLLM's block size on GPUs; its CPU backend uses 128 (a replica that says its own in ``/metrics`` is read)."""


Namespace = tuple[str | None, str | None]
"""What vLLM caches a prompt under besides its tokens: its cache salt (the tenant) and its adapter's name."""


def block_hashes(token_ids: Sequence[int], block_size: int, namespace: Namespace = (None, None)) -> list[int]:
    """The chained hashes of the prompt's full blocks. The chain starts from its namespace: vLLM caches a prompt
    under its cache salt and its adapter, so the same tokens of another tenant or adapter match nothing."""
    hashes: list[int] = []
    parent = hash(namespace) if namespace != (None, None) else 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, *token_ids[start : start + block_size]))
        hashes.append(parent)
    return hashes


class PrefixMemory:
    """One replica's remembered blocks: hash → when last sent there, least recently sent first."""

    def __init__(self) -> None:
        self._blocks: OrderedDict[int, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()

    def matched(self, hashes: Sequence[int], not_before: float) -> int:
        """How many of the leading ``hashes`` it holds, sent there at ``not_before`` or later."""
        count = 0
        for block in hashes:
            stamp = self._blocks.get(block)
            if stamp is None or stamp < not_before:
                break
            count += 1
        return count

    def record(self, hashes: Sequence[int], now: float, capacity: int, not_before: float) -> None:
        """Remember ``hashes`` as just sent; drop the least recently sent beyond ``capacity`` or too old. The
        first block counts as the most recent: as vLLM frees a request's blocks tail first, the tail goes first."""
        for block in reversed(hashes):
            self._blocks[block] = now
            self._blocks.move_to_end(block)
        while self._blocks:
            oldest, stamp = next(iter(self._blocks.items()))
            if len(self._blocks) <= capacity and stamp >= not_before:
                break
            del self._blocks[oldest]


class PrefixIndex:
    """The prefix memory of every replica, read and written through its settings. ``block_size`` None: each
    replica's own (from its ``/metrics``), else ``DEFAULT_BLOCK_SIZE``."""

    def __init__(self, block_size: int | None = None, max_blocks: int = 65536, ttl_seconds: float = 600.0) -> None:
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.ttl_seconds = ttl_seconds

    def _block_size(self, replica: Replica) -> int:
        return self.block_size or replica.signals.block_size or DEFAULT_BLOCK_SIZE

    def _capacity(self, replica: Replica) -> int:
        return min(self.max_blocks, replica.signals.num_blocks or self.max_blocks)

    def fullness(self, replica: Replica) -> float:
        """How full its prefix cache is, as remembered here (0 to 1)."""
        return len(replica.prefixes) / self._capacity(replica)

    def matched_fraction(
        self, replicas: Sequence[Replica], prompt: Sequence[int], namespace: Namespace = (None, None)
    ) -> dict[str, float]:
        """Per replica URL: the share of the prompt's tokens (in ``namespace``) in blocks it likely holds (0 to 1)."""
        if not prompt:
            return {replica.url: 0.0 for replica in replicas}
        not_before = time.monotonic() - self.ttl_seconds
        memo: dict[int, list[int]] = {}
        result: dict[str, float] = {}
        for replica in replicas:
            size = self._block_size(replica)
            hashes = memo.get(size)
            if hashes is None:
                hashes = memo[size] = block_hashes(prompt, size, namespace)
            result[replica.url] = replica.prefixes.matched(hashes, not_before) * size / len(prompt)
        return result

    def record(self, replica: Replica, prompt: Sequence[int], namespace: Namespace = (None, None)) -> None:
        """The prompt was sent to ``replica`` (in ``namespace``): its blocks are (about to be) cached there."""
        now = time.monotonic()
        hashes = block_hashes(prompt, self._block_size(replica), namespace)
        replica.prefixes.record(hashes, now, self._capacity(replica), now - self.ttl_seconds)
