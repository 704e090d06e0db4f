"""Evaluations (``/v1/evals``): evals, runs and output items (``routes``, ``service``, ``models``), the
template variables and graders, and the runner that samples and grades runs beside the engine."""
