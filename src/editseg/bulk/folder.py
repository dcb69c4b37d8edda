"""Many images, several expressions each: one JSONL of records plus one mask PNG per record.

Inputs (:func:`collect_jobs`): a folder (its image files, sorted; ``recursive`` for sub-folders),
a glob pattern (``"photos/**/*.jpg"``), or a manifest (``.jsonl`` / ``.csv``, the format of
:mod:`editseg.data.manifest`: one ``image``/``expression`` pair per line, grouped by image here).
Expressions given beside a folder or glob apply to every image.

**Records** (``<out>/records.jsonl``): a header ``{"format": "editseg-segment-records/1",
"settings": {...}}`` then one line per (image, expression): ``id``, ``image``, ``expression``,
``instruction``, ``mask_rle`` (COCO RLE), ``mask_file`` (relative to the records), ``mask_area``,
``box``, ``size`` and ``timings``; or ``id``, ``image``, ``expression`` and ``error`` when the image
could not be read (the run goes on).

**Resume.** Mask PNGs are written (atomically, by rename) before their records; records are
appended, flushed and fsynced once per image. A killed run therefore loses at most the image it
was working on and never leaves a record without its mask; running the same command again skips
every id already recorded (no duplicates) and cuts a half-written last line. Other settings than
the file's header raise :class:`SettingsMismatchError`.
"""

from __future__ import annotations

import glob as globbing
import json
import os
import re
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import EditsegError
from ..images import DEFAULT_MAX_PIXELS, load_image
from ..jsonl import JsonLineError, read_json_lines
from ..masks import encode_rle, save_mask_png

RECORDS_FORMAT = "editseg-segment-records/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".csv")


class FolderError(EditsegError):
    """The inputs or the records file cannot be used as asked; the message says why."""


class SettingsMismatchError(FolderError):
    """The records file was written with other settings."""


@dataclass
class ImageJob:
    """One image and the (id, expression) pairs to segment in it."""

    image: str  # as recorded (relative to the input root where possible)
    path: Path
    items: list[tuple[str, str]] = field(default_factory=list)


def is_bulk_input(source: str) -> bool:
    """True for a folder, a glob pattern or a manifest; False for a single image file."""
    path = Path(source).expanduser()
    return path.is_dir() or path.suffix.lower() in MANIFEST_SUFFIXES or any(c in source for c in "*?[")


def _safe(text: str, limit: int = 60) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.")[:limit] or "x"
    return f"{cleaned}-{zlib.crc32(text.encode('utf-8')):08x}"


def collect_jobs(source: str, expressions: Sequence[str] = (), recursive: bool = False) -> list[ImageJob]:
    """Images and expressions named by ``source`` (see the module docstring), in a stable order."""
    path = Path(source).expanduser()
    if path.suffix.lower() in MANIFEST_SUFFIXES and not any(c in source for c in "*?["):
        if expressions:
            raise FolderError("A manifest brings its own expressions; give either a manifest or expressions, not both.")
        return _manifest_jobs(path)
    if not expressions:
        raise FolderError("Give one or more expressions to segment in every image.")
    if path.is_dir():
        files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
        root = path
    elif any(c in source for c in "*?["):
        files = sorted(Path(p) for p in globbing.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
    else:
        raise FolderError(f"{source} is neither a folder, a glob pattern nor a manifest (.jsonl/.csv).")
    if not files:
        raise FolderError(f"No image files found for {source!r} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    jobs = []
    for file in files:
        name = file.relative_to(root).as_posix()
        jobs.append(ImageJob(name, file, [(f"{name}#{i}", e) for i, e in enumerate(expressions)]))
    return jobs


def _manifest_jobs(path: Path) -> list[ImageJob]:
    from ..data.manifest import load_manifest

    try:
        dataset = load_manifest(path)
    except (ValueError, OSError) as error:
        raise FolderError(str(error)) from None
    jobs: OrderedDict[str, ImageJob] = OrderedDict()
    seen: set[str] = set()
    for sample in dataset:
        if sample.sample_id in seen:
            raise FolderError(f"{path}: id {sample.sample_id!r} occurs twice; ids must be unique.")
        seen.add(sample.sample_id)
        image_path = Path(sample.image_path)
        key = str(image_path)
        if key not in jobs:
            jobs[key] = ImageJob(_relative(image_path, path.parent), image_path)
        jobs[key].items.append((sample.sample_id, sample.expression))
    if not jobs:
        raise FolderError(f"{path} lists no samples.")
    return list(jobs.values())


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


# -- records ----------------------------------------------------------------------------------------
def read_records(path: Path, repair: bool = False) -> tuple[dict | None, list[dict]]:
    """``(header, records)``; a half-written last line is dropped (and cut with ``repair``)."""
    try:
        lines, dropped = read_json_lines(path, repair)
    except JsonLineError as bad:
        raise FolderError(f"{bad.path}:{bad.line}: not a JSON line; the records file is damaged.") from None
    if dropped is not None:
        warnings.warn(f"{path}:{dropped[0]}: dropping a half-written last line", stacklevel=2)
    header, records = None, []
    for _, value in lines:
        if header is None:
            if not isinstance(value, dict) or value.get("format") != RECORDS_FORMAT:
                raise FolderError(f"{path} is not an editseg segment records file ({RECORDS_FORMAT}).")
            header = value
        else:
            records.append(value)
    return header, records


def run_settings(segmenter: Any, config: Any = None) -> dict[str, Any]:
    """What a records file is tied to: method, model, method settings, input size."""
    method = getattr(segmenter, "method", None)
    if config is None:
        try:
            config = segmenter.config
        except (EditsegError, AttributeError):  # methods without early grounding's settings
            config = None
    backbone = getattr(method, "backbone", None) if method is not None else getattr(segmenter, "backbone", None)
    return {
        "method": str(getattr(method, "name", "early-grounding")),
        "model": str(getattr(backbone, "name", "") or getattr(method, "model", "")),
        "config": config.to_dict() if config is not None else None,
        "max_side": getattr(segmenter, "max_side", None),
    }


def segment_folder(
    segmenter: Any,
    jobs: Sequence[ImageJob],
    out_dir: str | Path,
    config: Any = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> dict[str, int]:
    """Segment every (image, expression) of ``jobs`` not yet in ``<out_dir>/records.jsonl``.

    Returns counts: ``total``, ``done_before``, ``done_now``, ``errors`` (records with an error)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    records_path = out_dir / "records.jsonl"
    mask_dir = out_dir / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    settings = run_settings(segmenter, config)
    header, records = read_records(records_path, repair=True)
    if header is not None and header.get("settings") != json.loads(json.dumps(settings)):
        raise SettingsMismatchError(
            f"{records_path} was written with other settings ({header.get('settings')}); these are {settings}. "
            "Use another --out folder, or delete it to start over."
        )
    done = {r["id"] for r in records}
    total = sum(len(j.items) for j in jobs)
    ids = [i for j in jobs for i, _ in j.items]
    if len(set(ids)) != len(ids):
        raise FolderError("Two inputs have the same id; give each image once.")
    counts = {"total": total, "done_before": len(done & set(ids)), "done_now": 0, "errors": 0}
    with records_path.open("a", encoding="utf-8") as handle, tqdm(
        total=total, initial=counts["done_before"], unit="expr", desc="segmenting", disable=not progress, dynamic_ncols=True
    ) as bar:  # fmt: skip
        if header is None:
            _append(handle, [{"format": RECORDS_FORMAT, "settings": settings}])
        for job in jobs:
            todo = [(i, e) for i, e in job.items if i not in done]
            if not todo:
                continue
            new = _segment_image(segmenter, job, todo, config, max_pixels, mask_dir)
            _append(handle, new)
            counts["done_now"] += len(new)
            counts["errors"] += sum("error" in r for r in new)
            bar.update(len(new))
    return counts


def _segment_image(segmenter, job: ImageJob, todo, config, max_pixels: int, mask_dir: Path) -> list[dict]:
    try:
        image = load_image(job.path, max_pixels=max_pixels)
        segmenter.set_image(image)
        results = segmenter.predict([e for _, e in todo], config)
    except EditsegError as error:
        return [{"id": i, "image": job.image, "expression": e, "error": str(error)} for i, e in todo]
    out = []
    for (sample_id, expression), result in zip(todo, results):
        mask = np.asarray(result.mask, dtype=bool)
        name = f"{_safe(sample_id)}.png"
        temporary = mask_dir / f".partial-{name}"
        save_mask_png(mask, temporary)
        os.replace(temporary, mask_dir / name)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = None if rows.size == 0 else [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        out.append({
            "id": sample_id, "image": job.image, "expression": expression, "instruction": result.instruction,
            "mask_rle": encode_rle(mask), "mask_file": f"masks/{name}", "mask_area": int(mask.sum()), "box": box,
            "size": [int(mask.shape[1]), int(mask.shape[0])], "timings": dict(result.timings),
        })  # fmt: skip
    return out


def _append(handle: Any, values: Iterable[dict]) -> None:
    for value in values:
        handle.write(json.dumps(value, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
