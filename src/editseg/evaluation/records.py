"""JSONL records files: reading (with repair of a write cut short), appending, and the settings
a file is tied to. Shared by eval runs (:mod:`.runner`), sweeps and the separability study.

A records file is JSONL: a header line ``{"format": ..., "settings": {...}}``, then one JSON object
per line. A last line that is not valid JSON (a run killed mid-write) is dropped with a warning and,
when repairing, cut from the file so appends stay line-aligned; any other broken line is an error
that names the line and how to recover.
"""

from __future__ import annotations

import json
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EditsegError
from ..interrupts import DeferredInterrupt
from ..jsonl import JsonLineError, read_json_lines

__all__ = [
    "RECORDS_FORMAT",
    "EvaluationError",
    "SettingsMismatchError",
    "INFORMATIONAL_SETTINGS",
    "check_resumable",
    "compare_settings",
    "flatten_settings",
    "normalize_settings",
    "read_jsonl",
    "read_records",
    "safe_name",
    "write_line",
]

RECORDS_FORMAT = "editseg-eval-records/1"

LEGACY_METHOD = "early-grounding"
"""The method of records files written before settings named one."""

INFORMATIONAL_SETTINGS = ("lora_path",)
"""Settings kept in a records header but not compared on resume or merge (where a file lies is not
what it holds: RLFseg's LoRA is identified by ``config.lora_sha256``)."""


class EvaluationError(EditsegError):
    """An evaluation cannot run or cannot be summarised as asked; the message says why."""


class SettingsMismatchError(EvaluationError):
    """A records file was written with other settings than the run that wants to resume or merge it."""


def safe_name(sample_id: str) -> str:
    """A file-name-safe form of ``sample_id``, unique per id (a CRC suffix where characters were replaced)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", sample_id) or "sample"
    if safe != sample_id:  # keep names unique when characters were replaced
        safe += f"-{zlib.crc32(sample_id.encode('utf-8')):08x}"
    return safe


def read_jsonl(path: str | Path, repair: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every non-blank line of a JSONL file (``[]`` if it is missing).

    A last line that is not a JSON object is dropped with a warning and, with ``repair=True``, cut
    from the file (a missing final newline is added too). Any other bad line raises
    :class:`EvaluationError` naming it.
    """
    try:
        found, dropped = read_json_lines(path, repair, objects_only=True)
    except JsonLineError as bad:
        raise EvaluationError(
            f"{bad.path}:{bad.line}: not a valid record line ({bad.reason}). The other lines are intact: delete "
            f"that one (e.g. sed -i '{bad.line}d' '{bad.path}') and run again to redo its sample."
        ) from None
    if dropped is not None:
        warnings.warn(f"{Path(path)}:{dropped[0]}: dropping a truncated last line ({dropped[1]})", stacklevel=3)
    return found


def read_records(path: str | Path, repair: bool = False) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(header, records)`` of an eval records file; ``(None, [])`` for a missing or empty one.

    See :func:`read_jsonl` for truncated last lines and ``repair``. A missing header, a record
    without ``id``/``intersection``/``union`` or a repeated id raises :class:`EvaluationError`.
    """
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, value in read_jsonl(path, repair):
        if header is None:
            if value.get("format") != RECORDS_FORMAT or not isinstance(value.get("settings"), dict):
                raise EvaluationError(
                    f"{path} does not start with an editseg records header ({RECORDS_FORMAT}); "
                    "is it an editseg eval records file?"
                )
            header = value
            continue
        if not {"id", "intersection", "union"} <= value.keys():
            raise EvaluationError(f"{path}:{number}: a record needs 'id', 'intersection' and 'union'.")
        if value["id"] in seen:
            raise EvaluationError(f"{path}:{number}: sample {value['id']!r} is recorded twice.")
        seen.add(value["id"])
        records.append(value)
    return header, records


def write_line(handle: Any, value: dict[str, Any]) -> None:
    """Append ``value`` as one JSON line (strict JSON: no NaN)."""
    handle.write(json.dumps(value, ensure_ascii=False, allow_nan=False) + "\n")


def flatten_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def normalize_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``method`` filled in: files written before methods had names are early grounding's."""
    return settings if "method" in settings else {**settings, "method": LEGACY_METHOD}


def compare_settings(expected: dict[str, Any], found: dict[str, Any], where: str, ignore: Sequence[str] = ()) -> None:
    """Raise :class:`SettingsMismatchError` naming every setting that differs (``ignore``: keys not
    compared). A missing ``method`` is early grounding's (:func:`normalize_settings`); records of
    another method are refused with a message that says so first."""
    expected, found = normalize_settings(expected), normalize_settings(found)
    if "method" not in ignore and expected["method"] != found["method"]:
        raise SettingsMismatchError(
            f"{where} holds records of the {found['method']!r} method (model {found.get('model', '?')!r}); this run is "
            f"{expected['method']!r}. Records of different methods are never mixed: use another output folder "
            "(--out) or records file for this method, or delete the old one to start over."
        )
    expected, found = flatten_settings(expected), flatten_settings(found)
    keys = sorted((expected.keys() | found.keys()) - set(ignore))
    differing = [k for k in keys if expected.get(k) != found.get(k)]
    if differing:
        details = "; ".join(f"{k}: {found.get(k)!r} there, {expected.get(k)!r} here" for k in differing)
        raise SettingsMismatchError(
            f"{where} was written with other settings ({details}). Use another output folder or records "
            "file for these settings, or delete the old one to start over."
        )


def check_resumable(records_path: str | Path, partial_settings: dict[str, Any]) -> None:
    """Raise :class:`SettingsMismatchError` early (e.g. before loading a model) if an existing records
    file disagrees with any of ``partial_settings`` (nested keys may be left out)."""
    header, _ = read_records(records_path)
    if header is None:
        return
    wanted = flatten_settings(partial_settings)
    found = {k: v for k, v in flatten_settings(normalize_settings(header["settings"])).items() if k in wanted}
    compare_settings(wanted, found, str(records_path), ignore=INFORMATIONAL_SETTINGS)


class InterruptBetweenSamples(DeferredInterrupt):
    """Ctrl-C (SIGINT) during an evaluation stops it at the next sample boundary, after the current
    records are written and synced, instead of wherever the signal lands (see :mod:`editseg.interrupts`).
    A second Ctrl-C interrupts at once.

    Use as ``with InterruptBetweenSamples() as stop: ... stop.check()`` after each write."""

    def __init__(self) -> None:
        super().__init__(second_raises=True)
