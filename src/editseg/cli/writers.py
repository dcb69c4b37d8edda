"""Writing one expression's result: mask, overlay, CAM/RAM heatmaps and a JSON record.

Each expression's files are written to temporary names and then renamed into place, the JSON
record last, with Ctrl-C held back during the renames: an interrupted run leaves, per
expression, either every file or none (a ``.json`` always has its PNGs).

**JSON record.** ``width`` and ``height`` are the input image's size in pixels (what the mask
covers). ``mask_rle`` is a COCO run-length encoding exactly as ``pycocotools.mask.encode`` gives it,
so its ``size`` is ``[height, width]`` (COCO's order, column-major counts); decode it with
``pycocotools.mask.decode`` or :func:`editseg.masks.decode_rle`.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..interrupts import DeferredInterrupt
from ..masks import encode_rle, save_mask_png
from ..results import SegmentationResult
from ..viz import heatmap, overlay


def slug(text: str, limit: int = 40, fallback: str = "expression") -> str:
    """A file-name-safe short form of an expression: letters and digits of any script, dashes."""
    cleaned = re.sub(r"[\W_]+", "-", text.lower()).strip("-")
    return (cleaned[:limit].rstrip("-")) or fallback


def output_stem(image: str | os.PathLike, index: int, expression: str) -> str:
    """``<image stem>-<NN>-<expression slug>``: outputs of several images can share one folder."""
    return f"{slug(Path(image).stem, fallback='image')}-{index:02d}-{slug(expression)}"


def check_output_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and prove it writable (a probe file is written and removed), so a
    bad ``--out`` fails in a second with one line, not after the compute. Returns it as a Path."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder: choose a folder path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".editseg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"--out {out} is not writable ({reason}): choose a folder you can write to.") from None
    return path


def result_record(result: SegmentationResult, image_path: str | None = None) -> dict:
    """The JSON record of a result: expression, method, instruction, model, settings, RLE mask,
    the method's point/box/proposals where it gives them, and timings."""
    record = {
        "image": image_path,
        "expression": result.expression,
        "method": result.method,
        "instruction": result.instruction,
        "model": result.model,
        "settings": result.config,
        "prompt_tokens": result.prompt_tokens,
        "prompt_token_indices": result.prompt_token_indices,
        "width": int(result.mask.shape[1]),
        "height": int(result.mask.shape[0]),
        "mask_rle": encode_rle(result.mask),  # COCO RLE: its "size" is [height, width]
        "mask_area": result.area,
        "maps": sorted(result.maps),
        "timings": result.timings,
    }
    if result.point is not None:
        record["point"] = [int(v) for v in result.point]
    if result.box is not None:
        record["box"] = [int(v) for v in result.box]
    if result.proposals is not None:
        record["proposals"] = [_proposal_record(p) for p in result.proposals]
    return record


def _proposal_record(proposal: dict) -> dict:
    """A proposal with its mask as COCO RLE and numbers as plain JSON values."""
    out = {}
    for key, value in proposal.items():
        if key == "mask":
            out["mask_rle"] = encode_rle(np.asarray(value, dtype=bool))
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif isinstance(value, np.ndarray):
            out[key] = value.tolist()
        else:
            out[key] = value
    return out


RESERVED_KINDS = ("mask", "overlay", "json")


def map_kind(name: str) -> str:
    """The file kind of a named map (``cam`` → ``<stem>.cam.png``), never one of :data:`RESERVED_KINDS`."""
    kind = slug(name, limit=30)
    return f"map-{kind}" if kind in RESERVED_KINDS else kind


def write_result(
    result: SegmentationResult, image: Image.Image, out_dir: Path, stem: str, image_path: str | None = None
) -> dict[str, Path]:
    """Write ``<stem>.mask.png``, ``.overlay.png``, one heatmap per map of the method (early
    grounding: ``.cam.png``, ``.ram.png``) and ``.json``: all of them or none (see the module notes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"{stem}.{kind}.png" for kind in ("mask", "overlay")}
    for name in result.maps:
        kind = map_kind(name)
        paths[kind] = out_dir / f"{stem}.{kind}.png"
    paths["json"] = out_dir / f"{stem}.json"
    temporary = {kind: path.with_name(f".{path.name}.{os.getpid()}.tmp") for kind, path in paths.items()}
    try:
        save_mask_png(result.mask, temporary["mask"])
        overlay(image, result.mask).save(temporary["overlay"], format="PNG")
        for name, values in result.maps.items():
            heatmap(values).save(temporary[map_kind(name)], format="PNG")
        record = result_record(result, image_path)
        record["files"] = {kind: path.name for kind, path in paths.items() if kind != "json"}
        temporary["json"].write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
        with deferred_interrupt():
            for kind in paths:  # the record last (dicts keep order): it vouches for the rest
                os.replace(temporary[kind], paths[kind])
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    return paths


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) inside the block and deliver it as KeyboardInterrupt right after."""
    with DeferredInterrupt() as interrupt:
        yield
    interrupt.check()
