"""Galleries of the best and worst samples of an evaluation, as one PNG sheet.

Each row shows the image, the CAM, the RAM, the predicted mask and the ground truth over the image,
with the expression, the instruction and the IoU above it. The records only keep numbers, so the
``2 * k`` chosen samples are segmented again at the end (grouped by image); memory stays bounded
by one image's maps at a time, and the gallery also covers samples scored by earlier, resumed runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from ..config import MethodConfig
from ..data.base import ReferringSample, group_by_image
from ..viz import heatmap, overlay, panel_row, stack_rows
from .metrics import mask_iou
from .records import EvaluationError, read_records

if TYPE_CHECKING:
    from ..api import Segmenter

__all__ = ["gallery_rows", "select_gallery", "write_gallery"]

GT_COLOR = (40, 200, 80)


def select_gallery(records: Sequence[dict[str, Any]], k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``k`` highest-IoU and ``k`` lowest-IoU records (disjoint; ties broken by id)."""
    if k < 0:
        raise EvaluationError(f"gallery size must be 0 or more, got {k}")
    ranked = sorted(records, key=lambda r: (-float(r["iou"]), str(r["id"])))
    best = ranked[:k]
    taken = {r["id"] for r in best}
    worst = [r for r in reversed(ranked) if r["id"] not in taken][:k]
    return best, worst


def _title_bar(text: str, width: int) -> Image.Image:
    bar = Image.new("RGB", (max(width, 8), 22), (235, 235, 235))
    ImageDraw.Draw(bar).text((6, 5), text, fill=(0, 0, 0))
    return bar


def gallery_rows(
    segmenter: "Segmenter",
    samples: Sequence[ReferringSample],
    config: MethodConfig | None = None,
    height: int = 160,
) -> dict[str, Image.Image]:
    """One panel row per sample id: image, CAM, RAM, prediction, ground truth (re-segmented now)."""
    rows: dict[str, Image.Image] = {}
    for _, group in group_by_image(samples):
        image = group[0].load_image()
        segmenter.set_image(image)
        results = segmenter.predict([s.expression for s in group], config)
        for sample, result in zip(group, results):
            gt = sample.load_mask()
            iou = mask_iou(result.mask, gt) if gt.shape == result.mask.shape else float("nan")
            caption = f"IoU {iou:.3f} | {sample.expression!r} -> {result.instruction!r} | {sample.sample_id}"
            rows[sample.sample_id] = panel_row(
                [
                    ("image", image),
                    ("CAM", heatmap(result.cam)),
                    ("RAM", heatmap(result.ram)),
                    ("prediction", overlay(image, result.mask)),
                    ("ground truth", overlay(image, gt, color=GT_COLOR)),
                ],
                height=height,
                caption=caption,
            )
    return rows


def write_gallery(
    segmenter: "Segmenter",
    samples: Sequence[ReferringSample],
    records: str | Path | Sequence[dict[str, Any]],
    out_path: str | Path,
    k: int = 8,
    config: MethodConfig | None = None,
    height: int = 160,
) -> Path | None:
    """Write the best-``k`` / worst-``k`` sheet of ``records`` (a list or a records file) to ``out_path``.

    ``samples`` must contain the chosen ids (e.g. the evaluated dataset). Returns the path, or
    ``None`` when there is nothing to show.
    """
    if isinstance(records, (str, Path)):
        records = read_records(records)[1]
    best, worst = select_gallery(records, k)
    if not best and not worst:
        return None
    by_id = {s.sample_id: s for s in samples}
    wanted = [r["id"] for r in best + worst]
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise EvaluationError(f"gallery: sample(s) {', '.join(missing[:5])} are in the records but not in the dataset.")
    rows = gallery_rows(segmenter, [by_id[i] for i in wanted], config, height)
    width = max(row.width for row in rows.values())
    sheet: list[Image.Image] = []
    for title, chosen in ((f"best {len(best)} by IoU", best), (f"worst {len(worst)} by IoU", worst)):
        if chosen:
            sheet.append(_title_bar(title, width))
            sheet.extend(rows[r["id"]] for r in chosen)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stack_rows(sheet).save(out_path)
    return out_path
