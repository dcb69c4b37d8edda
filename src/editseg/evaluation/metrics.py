"""Referring-segmentation metrics, computed the way the RIS literature computes them.

Per sample, the intersection ``I`` and union ``U`` of the predicted and ground-truth masks are
pixel counts at the original image resolution. From those:

* ``IoU = I / U``; a sample with ``U == 0`` (empty prediction *and* empty ground truth) scores
  IoU 0, as in LAVT's ``test.py``. RefCOCO/+/g ground truths are never empty, so this only matters
  for your own data.
* ``oIoU = sum(I) / sum(U)`` over all samples (favours large objects).
* ``mIoU = mean(IoU)`` over samples.
* ``Pr@t`` = fraction of samples with ``IoU >= t`` for t in 0.5 … 0.9 (LAVT's convention;
  CRIS uses ``>`` with a 1e-6 guard in the denominator, which only differs at exact ties). The
  comparison is done in exact rational arithmetic, so IoU = 1/2 counts for Pr@0.5.
* point accuracy = fraction of samples whose heatmap argmax lies inside the ground truth (RefAM's PA).

All rates are fractions in [0, 1]; ``MetricAccumulator.summary(percent=True)`` reports them in
percent, like the papers (and :mod:`editseg.evaluation.published`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "PR_THRESHOLDS",
    "MetricAccumulator",
    "SampleRecord",
    "argmax_in_mask",
    "compute_metrics",
    "intersection_union",
    "iou_from_counts",
    "mask_iou",
    "point_accuracy",
    "resize_mask",
    "separability_score",
]

#: IoU thresholds of the ``Pr@t`` metrics.
PR_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensors, on any device
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _as_mask(array: Any, name: str) -> np.ndarray:
    mask = _to_numpy(array)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def intersection_union(pred: Any, gt: Any) -> tuple[int, int]:
    """Pixel counts ``(I, U)`` of two (H, W) masks of the same shape (nonzero = foreground)."""
    pred_mask, gt_mask = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(
            f"prediction shape {pred_mask.shape} != ground-truth shape {gt_mask.shape}; "
            "resize the prediction to the original image resolution before scoring"
        )
    intersection = int(np.count_nonzero(pred_mask & gt_mask))
    union = int(np.count_nonzero(pred_mask | gt_mask))
    return intersection, union


def iou_from_counts(intersection: int, union: int) -> float:
    """``I / U``, or 0.0 when ``U == 0`` (see the module docstring)."""
    return intersection / union if union > 0 else 0.0


def mask_iou(pred: Any, gt: Any) -> float:
    """IoU of two (H, W) masks of the same shape."""
    return iou_from_counts(*intersection_union(pred, gt))


def _meets(intersection: int, union: int, threshold: Fraction) -> bool:
    """Exactly ``IoU >= threshold``, without floating-point rounding."""
    if union == 0:
        return threshold <= 0
    return intersection * threshold.denominator >= threshold.numerator * union


def _centre_indices(small: int, large: int) -> np.ndarray:
    """For each of ``small`` cells, the index among ``large`` pixels under the cell's centre."""
    return ((2 * np.arange(small) + 1) * large) // (2 * small)


def argmax_in_mask(heatmap: Any, gt: Any) -> bool:
    """Whether the heatmap's maximum lies inside the ground-truth mask.

    ``heatmap`` is (h, w) and may be coarser (or finer) than ``gt`` (H, W): the centre of the
    argmax cell, ``((r + 0.5) * H / h, (c + 0.5) * W / w)``, is mapped to the pixel under it. Ties
    go to the first maximum in row-major order (``np.argmax``).
    """
    heat = _to_numpy(heatmap)
    gt_mask = _as_mask(gt, "gt")
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D (h, w) array, got shape {heat.shape}")
    if np.isnan(heat).any():
        raise ValueError("heatmap contains NaN")
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    (h, w), (height, width) = heat.shape, gt_mask.shape
    y = ((2 * int(row) + 1) * height) // (2 * h)
    x = ((2 * int(col) + 1) * width) // (2 * w)
    return bool(gt_mask[y, x])


def point_accuracy(heatmaps: Iterable[Any], gts: Iterable[Any]) -> float:
    """Fraction of (heatmap, ground truth) pairs whose heatmap argmax lies inside the mask."""
    hits = [argmax_in_mask(heatmap, gt) for heatmap, gt in _zip_strict(heatmaps, gts)]
    if not hits:
        raise ValueError("point_accuracy needs at least one sample")
    return sum(hits) / len(hits)


def _zip_strict(a: Iterable[Any], b: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """Like ``zip(strict=True)`` but with a message that names predictions and ground truths."""
    iter_a, iter_b, sentinel = iter(a), iter(b), object()
    while True:
        x, y = next(iter_a, sentinel), next(iter_b, sentinel)
        if x is sentinel and y is sentinel:
            return
        if x is sentinel or y is sentinel:
            raise ValueError("got a different number of predictions and ground truths")
        yield x, y


def resize_mask(mask: Any, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) mask to ``size = (height, width)``.

    Each output cell takes the input pixel under its centre (the same mapping as
    :func:`argmax_in_mask`), e.g. to bring a ground truth to the token grid for
    :func:`separability_score`.
    """
    source = _as_mask(mask, "mask")
    height, width = (int(v) for v in size)
    rows = _centre_indices(height, source.shape[0])
    cols = _centre_indices(width, source.shape[1])
    return source[np.ix_(rows, cols)]


def separability_score(features: Any, fg_mask: Any, normalize: bool = True, eps: float = 1e-12) -> float:
    """Foreground/background feature separability J of the paper's appendix A1 (eqs. A1-A3).

    ``J = ||mu_fg - mu_bg||^2 / (sigma2_fg + sigma2_bg)``, where ``mu`` are class means and
    ``sigma2`` the mean squared L2 distance of a class's features to its mean.

    Args:
        features: (N, D) token features.
        fg_mask: N booleans (any shape with N elements, flattened row-major, e.g. an (h, w) mask on
            the token grid), True for foreground tokens.
        normalize: L2-normalise each feature row first, as the paper does.
        eps: Floor on row norms when normalising.

    Returns ``inf`` when both classes have zero spread but distinct means, and ``nan`` when the means
    also coincide. Raises ``ValueError`` if either class is empty.
    """
    feats = _to_numpy(features).astype(np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {feats.shape}")
    fg = _to_numpy(fg_mask).astype(bool).reshape(-1)
    if fg.shape[0] != feats.shape[0]:
        raise ValueError(f"fg_mask has {fg.shape[0]} entries but there are {feats.shape[0]} features")
    if fg.all() or not fg.any():
        raise ValueError("separability needs at least one foreground and one background token")
    if normalize:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), eps)
    fg_feats, bg_feats = feats[fg], feats[~fg]
    mu_fg, mu_bg = fg_feats.mean(axis=0), bg_feats.mean(axis=0)
    sigma2_fg = float(np.mean(np.sum((fg_feats - mu_fg) ** 2, axis=1)))
    sigma2_bg = float(np.mean(np.sum((bg_feats - mu_bg) ** 2, axis=1)))
    between = float(np.sum((mu_fg - mu_bg) ** 2))
    spread = sigma2_fg + sigma2_bg
    if spread == 0.0:
        return math.inf if between > 0 else math.nan
    return between / spread


@dataclass(frozen=True)
class SampleRecord:
    """Per-sample counts that every summary metric is derived from."""

    sample_id: str | None
    intersection: int
    union: int
    point_hit: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "intersection", int(self.intersection))  # numpy ints -> int (JSON-safe)
        object.__setattr__(self, "union", int(self.union))
        if not 0 <= self.intersection <= self.union:
            raise ValueError(
                f"need 0 <= intersection <= union, got I={self.intersection}, U={self.union}"
            )

    @property
    def iou(self) -> float:
        return iou_from_counts(self.intersection, self.union)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, e.g. one line of a per-sample results file."""
        return {
            "sample_id": self.sample_id,
            "intersection": self.intersection,
            "union": self.union,
            "point_hit": self.point_hit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        point_hit = data.get("point_hit")
        return cls(
            sample_id=data.get("sample_id"),
            intersection=int(data["intersection"]),
            union=int(data["union"]),
            point_hit=None if point_hit is None else bool(point_hit),
        )


class MetricAccumulator:
    """Collects per-sample records and summarises them (oIoU, mIoU, Pr@t, point accuracy).

    The summary depends only on the multiset of records: sums of counts are exact integers and
    the IoU mean uses ``math.fsum``, so merging shards or resuming from saved records reproduces
    a single pass bit for bit. Sample ids, when given, must be unique; adding or merging a
    duplicate raises ``ValueError`` (it would mean overlapping shards or a sample scored twice).
    """

    def __init__(self, records: Iterable[SampleRecord | dict[str, Any]] = ()) -> None:
        self._records: list[SampleRecord] = []
        self._ids: set[str] = set()
        for record in records:
            self.add_record(record if isinstance(record, SampleRecord) else SampleRecord.from_dict(record))

    @property
    def records(self) -> tuple[SampleRecord, ...]:
        return tuple(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._ids

    def add_record(self, record: SampleRecord) -> SampleRecord:
        if record.sample_id is not None:
            if record.sample_id in self._ids:
                raise ValueError(f"sample {record.sample_id!r} was already recorded")
            self._ids.add(record.sample_id)
        self._records.append(record)
        return record

    def add(
        self, intersection: int, union: int, *, point_hit: bool | None = None, sample_id: str | None = None
    ) -> SampleRecord:
        """Record one sample from its counts."""
        hit = None if point_hit is None else bool(point_hit)
        return self.add_record(SampleRecord(sample_id, int(intersection), int(union), hit))

    def add_masks(
        self, pred: Any, gt: Any, *, heatmap: Any = None, sample_id: str | None = None
    ) -> SampleRecord:
        """Record one sample from its predicted and ground-truth masks (and optional heatmap)."""
        intersection, union = intersection_union(pred, gt)
        point_hit = None if heatmap is None else argmax_in_mask(heatmap, gt)
        return self.add(intersection, union, point_hit=point_hit, sample_id=sample_id)

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """A new accumulator holding the records of both."""
        merged = MetricAccumulator(self._records)
        for record in other._records:
            merged.add_record(record)
        return merged

    def __add__(self, other: MetricAccumulator) -> MetricAccumulator:
        if not isinstance(other, MetricAccumulator):
            return NotImplemented
        return self.merge(other)

    def __radd__(self, other: Any) -> MetricAccumulator:
        if other == 0:  # lets sum(accumulators) work
            return MetricAccumulator(self._records)
        return NotImplemented

    def summary(
        self, thresholds: Sequence[float] = PR_THRESHOLDS, percent: bool = False
    ) -> dict[str, float | int]:
        """Metrics over all records.

        Keys: ``num_samples``, ``total_intersection``, ``total_union``, ``oIoU``, ``mIoU``,
        ``Pr@<t>`` per threshold (e.g. ``Pr@0.5``) and, when any record has a point hit,
        ``point_accuracy`` and ``num_point_samples``. Rates are NaN for an empty accumulator;
        with ``percent=True`` they are multiplied by 100.
        """
        n = len(self._records)
        total_i = sum(r.intersection for r in self._records)
        total_u = sum(r.union for r in self._records)
        scale = 100.0 if percent else 1.0
        result: dict[str, float | int] = {
            "num_samples": n,
            "total_intersection": total_i,
            "total_union": total_u,
        }
        if n == 0:
            result["oIoU"] = result["mIoU"] = math.nan
        else:
            result["oIoU"] = scale * iou_from_counts(total_i, total_u)
            result["mIoU"] = scale * math.fsum(r.iou for r in self._records) / n
        for threshold in thresholds:
            exact = Fraction(str(threshold))
            hits = sum(_meets(r.intersection, r.union, exact) for r in self._records)
            result[f"Pr@{threshold:g}"] = scale * hits / n if n else math.nan
        pointed = [r.point_hit for r in self._records if r.point_hit is not None]
        if pointed:
            result["point_accuracy"] = scale * sum(pointed) / len(pointed)
            result["num_point_samples"] = len(pointed)
        return result


def compute_metrics(
    preds: Iterable[Any], gts: Iterable[Any], thresholds: Sequence[float] = PR_THRESHOLDS, percent: bool = False
) -> dict[str, float | int]:
    """One-shot :meth:`MetricAccumulator.summary` over paired prediction / ground-truth masks."""
    accumulator = MetricAccumulator()
    for pred, gt in _zip_strict(preds, gts):
        accumulator.add_masks(pred, gt)
    return accumulator.summary(thresholds=thresholds, percent=percent)
