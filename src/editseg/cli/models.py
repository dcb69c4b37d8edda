"""``editseg models``: the models editseg knows."""

from __future__ import annotations

import argparse
from typing import Any, Callable

__all__ = ["HANDLERS", "register", "run_models"]


def register(subparsers: Any) -> None:
    """Add ``models`` to the ``editseg`` sub-command parser."""
    subparsers.add_parser("models", help="list the models editseg knows")


def run_models(_: argparse.Namespace) -> int:
    from ..catalog import known_models

    for name, description in known_models().items():
        print(f"{name:24s} {description}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"models": run_models}
