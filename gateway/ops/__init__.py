"""Operations: Prometheus metrics (no tenant-identifying labels), liveness, readiness."""
