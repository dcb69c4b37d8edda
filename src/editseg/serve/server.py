"""Run the app with uvicorn: one process, one model, one worker thread feeding it.

More throughput than one device gives comes from more processes, one per device, each its own
``editseg serve --device cuda:N --port 80NN``, behind any load balancer (see docs/serving.md).
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import EditsegError
from .limits import ServeLimits

LOCALHOST = "127.0.0.1"


def run_server(
    segmenter: Any, host: str = LOCALHOST, port: int = 8000, limits: ServeLimits | None = None, log_level: str = "info"
) -> None:
    """Serve ``segmenter`` until interrupted (Ctrl-C)."""
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise EditsegError("editseg serve needs the web extra (uvicorn is missing): pip install 'editseg[serve]'") from None
    from .app import create_app

    app = create_app(segmenter, limits)
    shown = f"[{host}]" if ":" in host else host
    print(f"editseg: serving on http://{shown}:{port}/  (API docs: /docs, /openapi.json; Ctrl-C stops)", file=sys.stderr)
    if host not in (LOCALHOST, "localhost", "::1"):
        print(f"editseg: listening on {host}: reachable from other machines; there is no authentication.", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug", timeout_graceful_shutdown=5)
