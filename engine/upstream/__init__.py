"""The upstream backend: the gateway in front of many OpenAI-compatible vLLM servers (``vllm serve``), with
discovery, engine-aware and adapter-aware routing, adapters loaded where they are used, and failover."""
