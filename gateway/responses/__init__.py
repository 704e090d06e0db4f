"""The Responses API (``/v1/responses``): its request types (``requests``), the objects it answers (``objects``),
one response being made on the chat path (``turns``), its streamed events (``events``), and the durable store of
responses and their conversations (``store``)."""
