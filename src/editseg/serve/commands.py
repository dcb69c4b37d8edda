"""``editseg serve`` and ``editseg video``: thin wrappers over :mod:`editseg.serve` and :mod:`editseg.bulk.video`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from ..cli import _add_method_options, _add_model_options
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
    _add_model_options(serve)
    _add_method_options(serve)

    video = subparsers.add_parser(
        "video",
        help="per-frame masks for expressions in a video",
        description="Segment expressions in every frame of a video: records.jsonl (exact masks as COCO RLE), a mask "
        "video and an overlay video per expression, optionally PNG masks. Needs: pip install 'editseg[video]'.",
    )
    video.add_argument("video", help="video file (anything FFmpeg reads)")
    video.add_argument("expressions", nargs="+", metavar="EXPR", help="referring expressions")
    video.add_argument("--out", default="editseg-video", help="output folder (default: editseg-video)")
    video.add_argument("--fps", type=float, default=None, help="keep at most this many frames per second (default: every frame)")
    video.add_argument("--max-frames", type=int, default=300, help="stop after this many kept frames (default: 300)")
    video.add_argument("--smooth", type=int, default=1, help="temporal smoothing: per-pixel majority vote over a centred window of this many frames (odd; default: 1 = off)")
    video.add_argument("--png", action="store_true", help="also write every mask as a PNG (<expr>/frame_000000.png)")
    video.add_argument("--no-mask-video", action="store_true", help="do not write <expr>.mask.mp4")
    video.add_argument("--no-overlay-video", action="store_true", help="do not write <expr>.overlay.mp4")
    _add_model_options(video)
    _add_method_options(video)


def run_serve(args: argparse.Namespace) -> int:
    from ..cli import _segmenter_from_args
    from ..errors import ConfigError
    from .limits import ServeLimits
    from .server import run_server

    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_image_pixels,
        max_expressions=args.max_expressions, max_expression_chars=args.max_expression_chars,
        queue_size=args.queue_size, timeout_s=args.timeout, max_batch_expressions=args.max_batch_expressions,
    )  # fmt: skip
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1-65535, got {args.port}.")
    from . import app  # noqa: F401  (fail on a missing extra before loading the model)

    run_server(_segmenter_from_args(args), host=args.host, port=args.port, limits=limits, log_level=args.log_level)
    return 0


def run_video(args: argparse.Namespace) -> int:
    from ..bulk.video import probe, segment_video
    from ..cli import _config_from_args, _segmenter_from_args
    from ..images import DEFAULT_MAX_PIXELS

    info = probe(args.video)  # fail fast, before loading the model
    print(f"editseg: {args.video}: {info.width}x{info.height} at {info.fps:g} fps", file=sys.stderr)
    segmenter = _segmenter_from_args(args)
    summary = segment_video(
        segmenter, args.video, args.expressions, Path(args.out), config=_config_from_args(args), fps=args.fps,
        max_frames=args.max_frames, smooth=args.smooth, mask_video=not args.no_mask_video,
        overlay_video=not args.no_overlay_video, png=args.png, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
    )  # fmt: skip
    print(f"editseg: {summary['frames']} frame(s) at {summary['fps']:g} fps -> {args.out}", file=sys.stderr)
    return 0


HANDLERS = {"serve": run_serve, "video": run_video}
