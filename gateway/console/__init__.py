"""``/console``: the web console for tenants and the operator, served by the gateway itself (Jinja2 templates,
vendored static files; no Node build, no external fetch)."""
