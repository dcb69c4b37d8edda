"""``editseg segment``: masks for expressions in one image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from . import options

__all__ = ["HANDLERS", "register", "run_segment"]


def register(subparsers: Any) -> None:
    """Add ``segment`` to the ``editseg`` sub-command parser."""
    segment = subparsers.add_parser(
        "segment",
        help="masks for expressions in one image",
        description="Write, per expression: a mask PNG, an overlay PNG, one heatmap per map of the method "
        "(CAM and RAM for early grounding) and a JSON record (COCO RLE mask, settings, timings).",
        epilog=options.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument("image", help="image file (any Pillow format; grayscale, alpha and 16-bit are converted)")
    segment.add_argument("expressions", nargs="+", metavar="EXPR", help="referring expressions, e.g. 'the zebra on the left'")
    segment.add_argument("--out", default="editseg-out", help="output folder (default: editseg-out)")
    options.add_model_options(segment)
    options.add_method_options(segment)


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..images import DEFAULT_MAX_PIXELS, load_image
    from ..text import normalize_expression
    from .writers import slug, write_result

    image = load_image(args.image, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)  # fail fast, before loading
    for expression in args.expressions:
        normalize_expression(expression)
    segmenter = options.segmenter_from_args(args)
    segmenter.set_image(image)
    out_dir = Path(args.out)
    expressions = list(args.expressions)
    batches = range(0, len(expressions), segmenter.batch_size)
    with tqdm(total=len(expressions), unit="expr", desc="segmenting", disable=len(expressions) < 2) as progress:
        for start in batches:
            for offset, result in enumerate(segmenter.predict(expressions[start : start + segmenter.batch_size])):
                index = start + offset
                paths = write_result(result, image, out_dir, f"{index:02d}-{slug(result.expression)}", str(args.image))
                progress.write(f"{result.expression!r}: {result.area} px -> {paths['mask']}")
                progress.update(1)
    print(f"editseg: wrote {len(expressions)} result(s) to {out_dir}", file=sys.stderr)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"segment": run_segment}
