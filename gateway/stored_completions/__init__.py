"""Stored chat completions (``store: true``): kept per tenant, listed, read, labelled and deleted through
``/v1/chat/completions``, exported as fine-tuning files, and read by eval runs."""
