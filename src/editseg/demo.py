"""``editseg demo``: segment a few expressions in a built-in scene and write one picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .api import Segmenter
from .viz import heatmap, overlay, panel_row, stack_rows

DEMO_EXPRESSIONS = ["the red circle", "the blue square", "the yellow triangle on the right"]


def demo_scene(size: int = 256) -> Image.Image:
    """A simple scene with a red circle, a blue square and a yellow triangle on a soft gradient."""
    ramp = np.linspace(200, 235, size, dtype=np.float32)
    background = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), np.full((size, size), 215)], -1)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse([30 * s, 40 * s, 110 * s, 120 * s], fill=(220, 30, 30))
    draw.rectangle([140 * s, 30 * s, 220 * s, 110 * s], fill=(30, 60, 220))
    draw.polygon([(170 * s, 150 * s), (230 * s, 235 * s), (110 * s, 235 * s)], fill=(240, 210, 20))
    return image


def run_demo(segmenter: Segmenter, out_dir: Path, expressions: list[str] | None = None) -> Path:
    """Segment ``expressions`` in the demo scene; write ``demo.png`` (image, CAM, RAM, mask per row)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image = demo_scene()
    expressions = expressions or DEMO_EXPRESSIONS
    results = segmenter.segment(image, expressions)
    rows = []
    for result in results:
        caption = f"{result.expression!r} -> {result.instruction!r}"
        if segmenter.backbone.is_random:
            caption += "   [RANDOM WEIGHTS: meaningless]"
        rows.append(
            panel_row(
                [("image", image), ("CAM", heatmap(result.cam)), ("RAM", heatmap(result.ram)), ("mask", overlay(image, result.mask))],
                caption=caption,
            )
        )
    path = out_dir / "demo.png"
    stack_rows(rows).save(path)
    return path
