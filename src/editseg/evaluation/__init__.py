"""Evaluation: RIS metrics (oIoU, mIoU, Pr@t, point accuracy, feature separability) and published numbers."""

from .metrics import (
    PR_THRESHOLDS,
    MetricAccumulator,
    SampleRecord,
    argmax_in_mask,
    compute_metrics,
    intersection_union,
    iou_from_counts,
    mask_iou,
    point_accuracy,
    resize_mask,
    separability_score,
)
from .published import PUBLISHED, TABLES, PublishedTable, comparison_table

__all__ = [
    "PR_THRESHOLDS",
    "PUBLISHED",
    "TABLES",
    "MetricAccumulator",
    "PublishedTable",
    "SampleRecord",
    "argmax_in_mask",
    "comparison_table",
    "compute_metrics",
    "intersection_union",
    "iou_from_counts",
    "mask_iou",
    "point_accuracy",
    "resize_mask",
    "separability_score",
]
