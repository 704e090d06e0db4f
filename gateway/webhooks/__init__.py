"""Webhooks: a tenant's endpoints (``service``, ``objects``), where they may point (``destinations``), their
secrets and signatures (``secrets``), the events and the outbox written with the state changes they report
(``events``), and the loop that delivers them with retries (``outbox``, ``delivery``)."""
