"""Samples the model cannot take, in an evaluation: recorded as failed (IoU 0) or refused up front.

See :mod:`editseg.evaluation.runner` (``invalid="record"`` / ``"refuse"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..data.base import ReferringSample
from ..errors import ExpressionError, ImageLoadError
from .metrics import iou_from_counts

__all__ = ["INVALID_POLICIES", "evaluate_or_record", "failed_record", "refusal_message"]

INVALID_POLICIES = ("record", "refuse")


def failed_record(sample: ReferringSample, reason: str, instruction: str = "") -> dict[str, Any]:
    """The record of a sample the model could not take: an empty prediction (IoU 0, point miss)."""
    gt = sample.load_mask()
    gt_area = int(gt.sum())
    return {
        "id": sample.sample_id,
        "image_id": sample.image_id,
        "expression": sample.expression,
        "instruction": instruction,
        "iou": iou_from_counts(0, gt_area),
        "intersection": 0,
        "union": gt_area,
        "point_hit": False,
        "pred_area": 0,
        "gt_area": gt_area,
        "size": [int(gt.shape[1]), int(gt.shape[0])],
        "failed": reason,
        "timings": {},
    }


def refusal_message(rejected: Sequence[tuple[ReferringSample, str]], pending: int) -> str:
    """One line: how many pending samples the model cannot take, the first few, and the way on."""
    shown = "; ".join(f"{s.sample_id} {s.expression[:60]!r}: {reason}" for s, reason in rejected[:3])
    more = f"; and {len(rejected) - 3} more" if len(rejected) > 3 else ""
    return (
        f"{len(rejected)} of {pending} samples cannot be segmented: {shown}{more}. Nothing was run. "
        "Use --invalid record to score them as failed (IoU 0) and go on, or leave them out with --ids."
    )


def evaluate_or_record(
    evaluate_group: Callable[[list[ReferringSample]], list[dict[str, Any]]],
    group: list[ReferringSample],
    invalid: str,
) -> list[dict[str, Any]]:
    """``evaluate_group(group)``; with ``invalid="record"``, a refused expression or unreadable image
    makes failed records instead: the whole group for an image error, else one sample at a time."""
    try:
        return evaluate_group(group)
    except (ExpressionError, ImageLoadError) as error:
        if invalid != "record":
            raise
        if isinstance(error, ImageLoadError) or len(group) == 1:
            return [failed_record(s, str(error)) for s in group]
    out: list[dict[str, Any]] = []
    for sample in group:  # one expression was refused: redo the image one sample at a time
        out.extend(evaluate_or_record(evaluate_group, [sample], invalid))
    return out
