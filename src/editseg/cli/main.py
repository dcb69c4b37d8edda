"""Command line: ``editseg segment | demo | models | eval ... | toy ...``.

One module per command group, each with ``register(subparsers)`` and ``HANDLERS``; this module
builds the parser from them and dispatches. Errors print a message, not a traceback (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..errors import EditsegError
from . import bulk, demo, evaluation, models, segment, serve, shapes, toy
from .options import EPILOG, HelpParser

COMMAND_GROUPS = (segment, demo, shapes, models, evaluation, toy, serve, bulk)


def build_parser() -> argparse.ArgumentParser:
    parser = HelpParser(
        prog="editseg",
        description="Segment what a sentence refers to in a photo, from the grounding inside an image-editing model (one denoising step, no training).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"editseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {name: handler for group in COMMAND_GROUPS for name, handler in group.HANDLERS.items()}
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return handlers[args.command](args)
    except EditsegError as error:
        print(f"editseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
