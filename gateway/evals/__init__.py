"""Evaluations (``/v1/evals``): evals, runs and output items (``service``, ``models``; routes in
``gateway.routes.evals``), the
template variables and graders, and the runner that samples and grades runs beside the engine."""
