"""``editseg serve``: a thin wrapper over :mod:`editseg.serve`."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from .options import add_method_options, add_model_options
    from ..serve.limits import ServeLimits

    defaults = ServeLimits()
    serve = subparsers.add_parser(
        "serve",
        help="web page + HTTP JSON API on one loaded model",
        description="Load the model once and serve a web page (/) and an HTTP JSON API (/api/segment, /api/health, "
        "/docs, /openapi.json). Binds to 127.0.0.1 unless --host says otherwise. Needs: pip install 'editseg[serve]'.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    limits = serve.add_argument_group("limits (each answered with its own 4xx)")
    limits.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20, help="request body size in MiB (413; default: %(default)g)")
    limits.add_argument("--max-image-pixels", type=int, default=defaults.max_pixels, help="decoded image width x height (422; default: %(default)d)")
    limits.add_argument("--max-expressions", type=int, default=defaults.max_expressions, help="expressions per request (422; default: %(default)d)")
    limits.add_argument("--max-expression-chars", type=int, default=defaults.max_expression_chars, help="characters per expression (422; default: %(default)d)")
    limits.add_argument("--queue-size", type=int, default=defaults.queue_size, help="requests waiting for the model (429 beyond; default: %(default)d)")
    limits.add_argument("--timeout", type=float, default=defaults.timeout_s, help="seconds per request, queueing included (504; default: %(default)g)")
    limits.add_argument("--max-batch-expressions", type=int, default=defaults.max_batch_expressions, help="expressions taken from the queue for one model turn (default: %(default)d)")
    add_model_options(serve)
    add_method_options(serve)


def run_serve(args: argparse.Namespace) -> int:
    from .options import segmenter_from_args
    from ..errors import ConfigError
    from ..serve.limits import ServeLimits
    from ..serve.server import run_server

    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_image_pixels,
        max_expressions=args.max_expressions, max_expression_chars=args.max_expression_chars,
        queue_size=args.queue_size, timeout_s=args.timeout, max_batch_expressions=args.max_batch_expressions,
    )  # fmt: skip
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1-65535, got {args.port}.")
    from ..serve import app  # noqa: F401  (fail on a missing extra before loading the model)

    run_server(segmenter_from_args(args), host=args.host, port=args.port, limits=limits, log_level=args.log_level)
    return 0


HANDLERS = {"serve": run_serve}
