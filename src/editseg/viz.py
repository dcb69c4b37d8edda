"""Pictures people look at: heatmaps, overlays and labelled panels (Pillow only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Control points of a perceptually ordered dark-blue → cyan → yellow → red ramp.
_RAMP = np.array(
    [[0.05, 0.03, 0.35], [0.10, 0.35, 0.85], [0.10, 0.75, 0.85], [0.55, 0.90, 0.35], [0.98, 0.85, 0.15], [0.85, 0.15, 0.10]]
)


def heatmap(values: np.ndarray) -> Image.Image:
    """Colour a map in [0, 1] (H, W) with a blue-to-red ramp."""
    v = np.clip(np.nan_to_num(values.astype(np.float64)), 0, 1) * (len(_RAMP) - 1)
    low = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - low)[..., None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def overlay(image: Image.Image, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40), alpha: float = 0.5) -> Image.Image:
    """Tint the masked pixels of ``image`` and draw the mask outline."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    tint = np.array(color, dtype=np.float32)
    out = base.copy()
    out[mask] = base[mask] * (1 - alpha) + tint * alpha
    edge = mask & ~(_erode(mask))
    out[edge] = tint
    return Image.fromarray(out.round().astype(np.uint8))


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, mode="edge")
    return (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )


def panel_row(panels: Sequence[tuple[str, Image.Image]], height: int = 192, caption: str | None = None) -> Image.Image:
    """Side-by-side panels scaled to ``height`` with a title above each and an optional caption line."""
    title_h, caption_h, gap = 16, 18 if caption else 0, 4
    scaled = []
    for title, image in panels:
        width = max(1, round(image.width * height / image.height))
        resample = Image.NEAREST if image.width < height // 2 else Image.BILINEAR
        scaled.append((title, image.convert("RGB").resize((width, height), resample)))
    total_w = sum(im.width for _, im in scaled) + gap * (len(scaled) + 1)
    sheet = Image.new("RGB", (total_w, height + title_h + caption_h + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if caption:
        draw.text((gap, 2), caption, fill=(0, 0, 0))
    x = gap
    for title, image in scaled:
        draw.text((x, caption_h + 2), title, fill=(40, 40, 40))
        sheet.paste(image, (x, caption_h + title_h))
        x += image.width + gap
    return sheet


def stack_rows(rows: Sequence[Image.Image]) -> Image.Image:
    """Stack images vertically on white, left-aligned."""
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return sheet
