"""``editseg shapes``: write shapes scenes (images, masks, expressions) to try ``editseg segment`` on."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any, Callable

__all__ = ["HANDLERS", "register", "run_shapes"]


def register(subparsers: Any) -> None:
    """Add ``shapes`` to the ``editseg`` sub-command parser."""
    shapes = subparsers.add_parser(
        "shapes",
        help="write shapes scenes (images, masks, expressions) to try `editseg segment` on",
        description="Write held-out scenes of the shapes world the built-in toy-shapes model knows: images/<id>.png, "
        "masks/<id>.png (ground truth) and manifest.jsonl (one expression per line, usable with "
        "`editseg eval --dataset manifest`), and print a segment command for the first one.",
    )
    shapes.add_argument("--out", default="editseg-shapes", help="output folder (default: editseg-shapes)")
    shapes.add_argument("--count", type=int, default=4, help="number of scenes (default: 4)")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64, what toy-shapes was trained on)")


def run_shapes(args: argparse.Namespace) -> int:
    from ..data.shapes import save_samples_as_manifest, shapes_benchmark
    from ..errors import ConfigError
    from .writers import check_output_dir

    if args.count < 1:
        raise ConfigError(f"--count must be at least 1, got {args.count}.")
    if args.size < 32:
        raise ConfigError(f"--size must be at least 32 pixels, got {args.size}.")
    out_dir = check_output_dir(args.out)
    manifest = save_samples_as_manifest(shapes_benchmark(args.count, image_size=args.size), out_dir)
    first = json.loads(manifest.read_text(encoding="utf-8").splitlines()[0])
    image = out_dir / first["image"]
    print(f"editseg: wrote {args.count} scene(s) to {out_dir} (images/, masks/, manifest.jsonl). Try:", file=sys.stderr)
    print(f"editseg segment {shlex.quote(str(image))} {shlex.quote(first['expression'])} --out {shlex.quote(str(out_dir / 'masks-predicted'))}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"shapes": run_shapes}
