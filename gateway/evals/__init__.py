"""Evaluations (``/v1/evals``): evals, runs and output items (``routes``, ``service``, ``models`` for requests,
``schemas`` for responses), the template variables and graders, and the runner that samples and grades runs beside
the engine."""
