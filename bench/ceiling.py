"""Baseline: the HTTP ceiling. The gateway's own stack (uvicorn + httptools + uvloop, raw ASGI) answering 200
to every POST after reading the body, doing nothing else: no gateway on this stack can be faster.

    python -m bench.ceiling --port N
"""

from __future__ import annotations

import argparse

from bench.http_servers import serve_uvicorn


def main() -> None:
    """Serve the no-work ASGI app on ``--port`` in this process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_uvicorn(args.port)


if __name__ == "__main__":
    main()
