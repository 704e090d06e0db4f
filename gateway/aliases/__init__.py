"""A tenant's model aliases, managed: create, move (one call, optionally gated by an eval's score), roll back,
delete, and their history, for the tenant's own API (``/v1/aliases``) and the operator's
(``/admin/v1/tenants/{tenant}/aliases``). Serving reads them through ``gateway.inference.aliases``."""
