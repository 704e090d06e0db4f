"""Operations: Prometheus metrics (no tenant-identifying labels) and their snapshot for the console, the API
docs, and serving with a graceful drain; liveness and readiness are routes (``gateway.routes.ops``)."""
