"""Evaluation: RIS metrics (oIoU, mIoU, Pr@t, point accuracy, feature separability), published numbers, the benchmark runner and ablation sweeps."""

from .separability import mask_to_token_grid, separability_study
from .sweep_run import run_sweep
from .sweeps import SWEEPS, Sweep, SweepResult, build_sweep

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
from .records import EvaluationError, SettingsMismatchError
from .runner import evaluate, markdown_table, merge_records

__all__ = [
    "PR_THRESHOLDS",
    "PUBLISHED",
    "TABLES",
    "MetricAccumulator",
    "EvaluationError",
    "PublishedTable",
    "SWEEPS",
    "Sweep",
    "SweepResult",
    "SampleRecord",
    "SettingsMismatchError",
    "argmax_in_mask",
    "build_sweep",
    "comparison_table",
    "compute_metrics",
    "evaluate",
    "intersection_union",
    "mask_to_token_grid",
    "iou_from_counts",
    "markdown_table",
    "mask_iou",
    "merge_records",
    "point_accuracy",
    "resize_mask",
    "run_sweep",
    "separability_score",
    "separability_study",
]
