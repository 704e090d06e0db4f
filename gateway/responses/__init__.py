"""The Responses API (``/v1/responses``): its request types (``requests``), the objects it answers (``objects``),
the conversation as chat messages (``conversation``), one response being made on the chat path (``turns``), its
output items from the tool parser's events (``output``), its streamed events (``events``), and the durable store
of responses and their chains (``store``)."""
