"""Inference: what the OpenAI routes that run a model need (``gateway.routes``: ``chat``, ``completions``,
``models``): their request types and response ``schemas``, the model catalog (base and ``ft:`` models), prompts to
tokens, runs on the engine, and streaming."""
