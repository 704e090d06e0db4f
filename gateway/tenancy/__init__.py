"""Tenants and their keys: who a request acts for (``principal``, ``key_cache``), the tenants/keys table
operations (``service``, ``models``, ``keys``), changes to keys and tenants as routes make them (``access``),
console sessions and sign-in throttling (``console_sessions``, ``sessions``, ``sign_in_throttle``) and the admin
key. Their routes are in ``gateway.routes`` (``admin``, ``console``)."""
