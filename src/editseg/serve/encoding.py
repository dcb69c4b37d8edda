"""Results as JSON: COCO RLE masks, optional PNGs as ``data:`` URLs, boxes, maps, timings."""

from __future__ import annotations

import base64
import io
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ..masks import encode_rle
from ..viz import heatmap, overlay

OUTPUTS = ("rle", "mask_png", "overlay_png", "maps_png", "heatmaps_png")
"""What a response may carry per expression:

- ``rle``: the mask as COCO RLE (``{"size": [h, w], "counts": "..."}``), always cheap;
- ``mask_png``: the mask as an 8-bit PNG (0 / 255);
- ``overlay_png``: the image with the mask tinted red and outlined;
- ``maps_png``: every named map (``cam``, ``ram``, ...) as an 8-bit grayscale PNG (value x 255);
- ``heatmaps_png``: the same maps coloured blue → red, for people.
"""


def parse_outputs(text: str | Iterable[str]) -> set[str]:
    """``"rle,mask_png"`` → ``{"rle", "mask_png"}``; unknown names raise ``ValueError``."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise ValueError(f"unknown outputs {', '.join(unknown)}; choose from {', '.join(OUTPUTS)}")
    return set(names) or {"rle"}


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_box(mask: np.ndarray) -> list[int] | None:
    """``[x0, y0, x1, y1]`` (x1, y1 exclusive) of a bool mask; ``None`` when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def result_maps(result: Any) -> dict[str, np.ndarray]:
    """Named input-resolution maps of a result (``maps`` when the result has it, else CAM/RAM)."""
    maps = getattr(result, "maps", None)
    if maps:
        return dict(maps)
    return {name: getattr(result, name) for name in ("cam", "ram") if getattr(result, name, None) is not None}


def result_json(result: Any, image: Image.Image, outputs: set[str]) -> dict[str, Any]:
    """One expression's entry in a response."""
    mask = np.asarray(result.mask, dtype=bool)
    entry: dict[str, Any] = {
        "expression": result.expression,
        "instruction": result.instruction,
        "mask_area": int(mask.sum()),
        "box": mask_box(mask),
        "size": [int(mask.shape[1]), int(mask.shape[0])],
        "timings": {k: float(v) for k, v in result.timings.items()},
    }
    if "rle" in outputs:
        entry["mask_rle"] = encode_rle(mask)
    if "mask_png" in outputs:
        entry["mask_png"] = png_data_url(Image.fromarray(mask.astype(np.uint8) * 255))
    if "overlay_png" in outputs:
        entry["overlay_png"] = png_data_url(overlay(image, mask))
    maps = result_maps(result) if outputs & {"maps_png", "heatmaps_png"} else {}
    if "maps_png" in outputs:
        entry["maps_png"] = {
            name: png_data_url(Image.fromarray((np.clip(m, 0, 1) * 255).round().astype(np.uint8)))
            for name, m in maps.items()
        }
    if "heatmaps_png" in outputs:
        entry["heatmaps_png"] = {name: png_data_url(heatmap(m)) for name, m in maps.items()}
    return entry
