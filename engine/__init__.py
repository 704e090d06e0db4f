"""The model engine: vLLM behind a small interface (``engine.protocol``)."""
