"""Masks on disk and in JSON: PNG files and COCO run-length encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask, JSON-ready (``counts`` as an ASCII string)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """Bool (H, W) mask from a COCO RLE (compressed string/bytes or uncompressed list counts)."""
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects(rle, *rle["size"])
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def save_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """Write a mask as an 8-bit PNG (0 background, 255 foreground)."""
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")


def load_mask_png(path: str | Path) -> np.ndarray:
    """Read a mask PNG: any non-zero pixel is foreground."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("L") if image.mode not in ("1", "L", "I", "I;16") else image)
    return array > 0
