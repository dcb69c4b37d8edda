"""Writing one expression's result: mask, overlay, CAM/RAM heatmaps and a JSON record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..masks import encode_rle, save_mask_png
from ..results import SegmentationResult
from ..viz import heatmap, overlay


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of an expression."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (cleaned[:limit].rstrip("-")) or "expression"


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
        "mask_rle": encode_rle(result.mask),
        "mask_area": result.area,
        "size": [int(result.mask.shape[1]), int(result.mask.shape[0])],
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
    grounding: ``.cam.png``, ``.ram.png``) and ``.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"{stem}.{kind}.png" for kind in ("mask", "overlay")}
    save_mask_png(result.mask, paths["mask"])
    overlay(image, result.mask).save(paths["overlay"])
    for name, values in result.maps.items():
        kind = map_kind(name)
        paths[kind] = out_dir / f"{stem}.{kind}.png"
        heatmap(values).save(paths[kind])
    paths["json"] = out_dir / f"{stem}.json"
    record = result_record(result, image_path)
    record["files"] = {kind: path.name for kind, path in paths.items() if kind != "json"}
    paths["json"].write_text(json.dumps(record, indent=2))
    return paths
