"""Reading append-only JSON Lines files (records of eval runs and of bulk segmentation) safely.

A writer killed mid-line leaves a last line that is not valid JSON: :func:`read_json_lines`
reports it as dropped and, with ``repair=True``, cuts it from the file so that later appends stay
line-aligned (a missing final newline is added instead where the last line is whole). A bad line
anywhere else is damage, not a cut-short write: :class:`JsonLineError` names it. Callers phrase
the warning and the error for their own files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EditsegError

__all__ = ["JsonLineError", "read_json_lines"]


class JsonLineError(EditsegError):
    """A line before the last one is not valid: ``line`` (1-based) and ``reason``."""

    def __init__(self, path: Path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


def read_json_lines(
    path: str | Path, repair: bool = False, objects_only: bool = False
) -> tuple[list[tuple[int, Any]], tuple[int, str] | None]:
    """``(lines, dropped)``: ``(line number, value)`` of every non-blank line (``[]`` for a missing
    file) and, where the last non-blank line was not valid, ``(its line number, why)``, else None.

    ``objects_only``: a value that is not a JSON object counts as invalid. ``repair``: cut a dropped
    last line from the file, or add a missing final newline. Raises :class:`JsonLineError` for an
    invalid line before the last."""
    path = Path(path)
    if not path.is_file():
        return [], None
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    found: list[tuple[int, Any]] = []
    dropped: tuple[int, str] | None = None
    offset = 0
    cut_at: int | None = None
    for index, line in enumerate(lines):
        start, offset = offset, offset + len(line)
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if objects_only and not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if index == last:
                dropped, cut_at = (index + 1, str(error)), start
                break
            raise JsonLineError(path, index + 1, str(error)) from None
        found.append((index + 1, value))
    if repair:
        if cut_at is not None:
            with path.open("r+b") as handle:
                handle.truncate(cut_at)
        elif data and not data.endswith(b"\n"):
            with path.open("ab") as handle:
                handle.write(b"\n")
    return found, dropped
