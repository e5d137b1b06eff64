"""Baseline: the HTTP ceiling. The gateway's own server (uvicorn + httptools + uvloop with gateway/protocol.py and
the gateway's settings, ``gateway.server.server_config``) serving a raw ASGI app that reads the body and answers 200,
doing nothing else: no gateway on this stack can be faster. ``--stock``: uvicorn as shipped instead (no receive
deadline or header cap, a response's head and body written separately), for reference.

    python -m bench.ceiling --port N [--stock]
"""

from __future__ import annotations

import argparse

import uvicorn

from bench.http_servers import app, serve_uvicorn
from gateway.metrics import GatewayMetrics
from gateway.server import server_config
from ops.settings import Settings


def main() -> None:
    """Serve the no-work ASGI app on ``--port`` in this process."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stock", action="store_true", help="stock uvicorn instead of the gateway's server")
    args = parser.parse_args()
    if args.stock:
        serve_uvicorn(args.port)
        return
    settings = Settings.from_env({"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(args.port), "LOG_LEVEL": "WARNING"})
    uvicorn.Server(server_config(app, settings, GatewayMetrics())).run()


if __name__ == "__main__":
    main()
