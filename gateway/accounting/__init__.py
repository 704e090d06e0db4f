"""Accounting, the home of what a tenant is charged and allowed: ``admission`` (the one object through which
requests, uploads and fine-tuning jobs are let in and settled), ``limits`` (RPM/TPM/concurrency windows and
monthly budgets, in process or on Redis), ``ledger`` and ``records`` (the usage ledger and its writer),
``training_billing`` (charging fine-tuning jobs once), ``usage`` and ``schemas`` (usage reports; routes in
``gateway.routes.usage``)."""
