"""Evaluations (``/v1/evals``): evals, runs and output items (``service``, ``models`` for requests, ``schemas`` for
responses, ``objects`` building them; routes in ``gateway.routes.evals``), a run's typed ``recipe``, the template
variables and graders, and the runner that samples and grades runs beside the engine (leased through ``queue``)."""
