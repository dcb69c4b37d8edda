"""Evaluation: RIS metrics (oIoU, mIoU, Pr@t, point accuracy, feature separability), published numbers, the benchmark runner and ablation sweeps.

The names below are imported from their modules on first use, so that ``editseg.evaluation.records``
or ``.metrics`` (no torch) can be imported without the runner and the sweeps (torch).
"""

from __future__ import annotations

import importlib
from typing import Any

LAZY = {
    "separability": ("mask_to_token_grid", "separability_study"),
    "sweep_run": ("run_sweep",),
    "sweeps": ("SWEEPS", "Sweep", "SweepResult", "build_sweep"),
    "metrics": (
        "PR_THRESHOLDS", "MetricAccumulator", "SampleRecord", "argmax_in_mask", "compute_metrics", "intersection_union",
        "iou_from_counts", "mask_iou", "point_accuracy", "resize_mask", "separability_score",
    ),
    "published": ("PUBLISHED", "TABLES", "PublishedTable", "comparison_table"),
    "records": ("EvaluationError", "SettingsMismatchError"),
    "runner": ("evaluate", "markdown_table", "merge_records"),
}  # fmt: skip
MODULE_OF = {name: module for module, names in LAZY.items() for name in names}

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


def __getattr__(name: str) -> Any:
    if name in MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{MODULE_OF[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
