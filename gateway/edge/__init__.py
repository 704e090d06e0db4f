"""The edge of the gateway: what every request passes before a route sees it, outermost first —
``request_context`` (server-minted id, client id check, access log, HTTP metrics), ``authentication`` (the
bearer token, before any body is read), ``body_limits`` (413 past a route's cap) — and ``strict_json``, the
route class that parses JSON bodies strictly, and ``origin`` (cross-site requests to the console refused, for the
authentication's console bridge and the console's pages)."""
