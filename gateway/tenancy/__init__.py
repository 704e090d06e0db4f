"""Tenants and their keys: who a request acts for (``principal``, ``key_cache``), the tenants/keys table
operations (``service``, ``models``, ``keys``), the admin API for them (``routes``) and the admin key."""
