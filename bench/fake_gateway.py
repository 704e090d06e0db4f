"""The real gateway (auth, limits, metering, routes) in front of the instant fake engine.

Used by the gateway-overhead benchmark and by tests that need several gateway processes without loading
several models, served as ``llmaas serve`` serves (SIGTERM drains). Settings come from the usual ``LLMAAS_``
environment variables.

    python bench/fake_gateway.py --port 8100 [--seconds-per-token 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import logging

    from engine.fake import FakeEngine, fake_backend
    from engine.settings import EngineSettings
    from gateway.app import create_app
    from gateway.edge.connections import uvicorn_options
    from gateway.ops import drain
    from gateway.settings import GatewaySettings
    from gateway.state import state_of

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--seconds-per-token", type=float, default=0.0)
    args = parser.parse_args()
    settings = GatewaySettings()
    logging.basicConfig(level=settings.log_level.upper())
    app = create_app(
        settings,
        EngineSettings(),
        backend_factory=fake_backend(FakeEngine(seconds_per_token=args.seconds_per_token)),
    )
    drain.serve(
        app,
        lambda: state_of(app).admission,
        settings.drain_seconds,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        access_log=False,
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
