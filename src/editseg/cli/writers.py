"""Writing one expression's result: mask, overlay, CAM/RAM heatmaps and a JSON record."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from ..masks import encode_rle, save_mask_png
from ..results import SegmentationResult
from ..viz import heatmap, overlay


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of an expression."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (cleaned[:limit].rstrip("-")) or "expression"


def result_record(result: SegmentationResult, image_path: str | None = None) -> dict:
    """The JSON record of a result: expression, instruction, model, settings, RLE mask, timings."""
    return {
        "image": image_path,
        "expression": result.expression,
        "instruction": result.instruction,
        "model": result.model,
        "settings": result.config,
        "prompt_tokens": result.prompt_tokens,
        "prompt_token_indices": result.prompt_token_indices,
        "mask_rle": encode_rle(result.mask),
        "mask_area": result.area,
        "size": [int(result.mask.shape[1]), int(result.mask.shape[0])],
        "timings": result.timings,
    }


def write_result(
    result: SegmentationResult, image: Image.Image, out_dir: Path, stem: str, image_path: str | None = None
) -> dict[str, Path]:
    """Write ``<stem>.mask.png``, ``.overlay.png``, ``.cam.png``, ``.ram.png`` and ``.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: out_dir / f"{stem}.{kind}.png" for kind in ("mask", "overlay", "cam", "ram")}
    paths["json"] = out_dir / f"{stem}.json"
    save_mask_png(result.mask, paths["mask"])
    overlay(image, result.mask).save(paths["overlay"])
    heatmap(result.cam).save(paths["cam"])
    heatmap(result.ram).save(paths["ram"])
    record = result_record(result, image_path)
    record["files"] = {kind: path.name for kind, path in paths.items() if kind != "json"}
    paths["json"].write_text(json.dumps(record, indent=2))
    return paths
