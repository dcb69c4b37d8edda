"""``editseg video`` and ``editseg segment`` over many images: thin wrappers over :mod:`editseg.bulk`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from .options import add_method_options, add_model_options

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
    add_model_options(video)
    add_method_options(video)


def run_segment_many(args: argparse.Namespace) -> int:
    """``editseg segment FOLDER|GLOB|MANIFEST [EXPR ...]``: one records.jsonl + masks/, resumable."""
    from ..bulk.folder import collect_jobs, segment_folder
    from ..images import DEFAULT_MAX_PIXELS
    from ..text import normalize_expression
    from .options import segmenter_from_args

    for expression in args.expressions:
        normalize_expression(expression)
    jobs = collect_jobs(args.image, args.expressions, recursive=args.recursive)  # fail fast, before loading
    total = sum(len(job.items) for job in jobs)
    print(f"editseg: {len(jobs)} image(s), {total} expression(s) -> {args.out}/records.jsonl", file=sys.stderr)
    segmenter = segmenter_from_args(args)
    counts = segment_folder(segmenter, jobs, Path(args.out), max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    print(
        f"editseg: {counts['done_now']} new record(s), {counts['done_before']} already there, "
        f"{counts['errors']} error(s) (see their 'error' field) in {args.out}/records.jsonl", file=sys.stderr,
    )  # fmt: skip
    return 0


def run_video(args: argparse.Namespace) -> int:
    from ..bulk.video import probe, segment_video
    from .options import config_from_args, segmenter_from_args
    from ..images import DEFAULT_MAX_PIXELS

    info = probe(args.video)  # fail fast, before loading the model
    print(f"editseg: {args.video}: {info.width}x{info.height} at {info.fps:g} fps", file=sys.stderr)
    segmenter = segmenter_from_args(args)
    summary = segment_video(
        segmenter, args.video, args.expressions, Path(args.out), config=config_from_args(args), fps=args.fps,
        max_frames=args.max_frames, smooth=args.smooth, mask_video=not args.no_mask_video,
        overlay_video=not args.no_overlay_video, png=args.png, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
    )  # fmt: skip
    print(f"editseg: {summary['frames']} frame(s) at {summary['fps']:g} fps -> {args.out}", file=sys.stderr)
    return 0


HANDLERS = {"video": run_video}
