"""``editseg segment``: masks for expressions in one image."""

from __future__ import annotations

import argparse
import sys
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
    segment.add_argument("image", help="image file (any Pillow format; grayscale, alpha and 16-bit are converted), or many: "
                         "a folder, a quoted glob ('photos/**/*.jpg') or a manifest (.jsonl/.csv) → records.jsonl + masks/, resumable")
    segment.add_argument("expressions", nargs="*", metavar="EXPR", help="referring expressions, e.g. 'the zebra on the left' (a manifest brings its own)")
    segment.add_argument("--out", default="editseg-out", help="output folder (default: editseg-out)")
    segment.add_argument("--recursive", action="store_true", help="with a folder: also its sub-folders")
    options.add_model_options(segment)
    options.add_method_options(segment)


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..bulk.folder import is_bulk_input
    from ..errors import ExpressionError
    from ..images import load_image
    from ..text import normalize_expression
    from .writers import check_output_dir, output_stem, write_result

    if is_bulk_input(args.image):
        from .bulk import run_segment_many

        return run_segment_many(args)
    if not args.expressions:
        raise ExpressionError("Give one or more expressions after the image.")
    # Everything that can be judged without the model, before the seconds-long load.
    options.config_from_args(args)
    image = load_image(args.image, max_pixels=options.max_pixels_from_args(args), reduce_oversize=args.reduce_large)
    for expression in args.expressions:
        normalize_expression(expression)
    out_dir = check_output_dir(args.out)
    segmenter = options.segmenter_from_args(args)
    segmenter.set_image(image)
    expressions = list(args.expressions)
    batches = range(0, len(expressions), segmenter.batch_size)
    with tqdm(total=len(expressions), unit="expr", desc="segmenting", disable=len(expressions) < 2) as progress:
        for start in batches:
            for offset, result in enumerate(segmenter.predict(expressions[start : start + segmenter.batch_size])):
                index = start + offset
                paths = write_result(result, image, out_dir, output_stem(args.image, index, result.expression), str(args.image))
                progress.write(f"{result.expression!r}: {result.area} px -> {paths['mask']}")
                progress.update(1)
    print(f"editseg: wrote {len(expressions)} result(s) to {out_dir}", file=sys.stderr)
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"segment": run_segment}
