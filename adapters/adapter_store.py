"""Where model servers read fine-tuned adapters: the adapter store.

The worker writes each adapter under the registry's directory (``<data dir>/adapters/<job id>/``). The default
store is that directory shared with the vLLM replicas (an NFS export, a Docker or Kubernetes volume), mounted
at ``replica_root`` on their side. The store is an interface: an object store would upload what the worker
wrote and hand replicas a location they can load from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.protocol import AdapterRef


class AdapterStore(Protocol):
    def location_for_replicas(self, adapter: AdapterRef) -> str:
        """What a replica is told to load (``lora_path`` of ``POST /v1/load_lora_adapter``)."""
        ...


@dataclass(frozen=True)
class SharedDirectory:
    local_root: Path
    replica_root: str | None = None
    """The same directory as the replicas mount it; unset: the same path as here."""

    def location_for_replicas(self, adapter: AdapterRef) -> str:
        if self.replica_root is None:
            return str(adapter.path)
        relative = adapter.path.relative_to(self.local_root).as_posix()
        return f"{self.replica_root.rstrip('/')}/{relative}"
