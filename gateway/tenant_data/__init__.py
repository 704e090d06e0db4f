"""Everything a tenant owns, across the domains (files, fine-tuning jobs and adapters, evals, usage, keys,
sessions): its erasure (``erasure``) and its export as one archive (``export``)."""
