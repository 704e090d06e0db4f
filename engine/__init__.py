"""The model engines: what serves the models (a ``Backend``: vLLM in this process, or a pool of vLLM servers),
built by ``engine.factory.build_backend``, and the per-model interface the gateway calls (``engine.protocol``)."""
