"""Metrics against independent plain-Python implementations, hand-computed cases and edge cases."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from editseg.evaluation import published
from editseg.evaluation.metrics import (
    PR_THRESHOLDS,
    MetricAccumulator,
    SampleRecord,
    argmax_in_mask,
    compute_metrics,
    intersection_union,
    mask_iou,
    point_accuracy,
    resize_mask,
    separability_score,
)


def reference_metrics(preds, gts):
    """Plain-Python transcription of the usual RIS evaluation loop (LAVT style)."""
    cum_i = cum_u = 0
    ious = []
    correct = [0] * len(PR_THRESHOLDS)
    for pred, gt in zip(preds, gts):
        i = u = 0
        for p_row, g_row in zip(pred.tolist(), gt.tolist()):
            for p, g in zip(p_row, g_row):
                i += bool(p) and bool(g)
                u += bool(p) or bool(g)
        iou = i / u if u else 0.0
        ious.append(iou)
        cum_i += i
        cum_u += u
        for k, t in enumerate(PR_THRESHOLDS):
            correct[k] += iou >= t
    result = {"oIoU": cum_i / cum_u, "mIoU": sum(ious) / len(ious)}
    result.update({f"Pr@{t:g}": c / len(ious) for t, c in zip(PR_THRESHOLDS, correct)})
    return result


def random_pairs(rng, n, shape_choices=((7, 9), (16, 5), (12, 12))):
    preds, gts = [], []
    for _ in range(n):
        shape = shape_choices[rng.integers(len(shape_choices))]
        gt = rng.random(shape) < rng.uniform(0.1, 0.6)
        noise = rng.random(shape) < rng.uniform(0.0, 0.5)
        preds.append(gt ^ noise)
        gts.append(gt)
    return preds, gts


def test_tiny_hand_computed_cases():
    pred = np.array([[1, 1], [0, 0]], bool)
    gt = np.array([[1, 0], [1, 0]], bool)
    assert intersection_union(pred, gt) == (1, 3)
    assert mask_iou(pred, gt) == pytest.approx(1 / 3)
    assert intersection_union(gt, gt) == (2, 2) and mask_iou(gt, gt) == 1.0
    assert intersection_union(~gt, gt) == (0, 4)
    # Non-bool inputs: nonzero is foreground.
    assert intersection_union(np.array([[0, 255], [3, 0]]), np.array([[0.0, 1.0], [0.0, 0.0]])) == (1, 2)
    # Empty union scores IoU 0 (LAVT convention).
    empty = np.zeros((2, 2), bool)
    assert intersection_union(empty, empty) == (0, 0) and mask_iou(empty, empty) == 0.0

    acc = MetricAccumulator()
    acc.add_masks(pred, gt)  # I=1, U=3
    acc.add_masks(gt, gt)  # I=2, U=2
    summary = acc.summary()
    assert summary["oIoU"] == pytest.approx(3 / 5)
    assert summary["mIoU"] == pytest.approx((1 / 3 + 1) / 2)
    assert summary["Pr@0.5"] == 0.5 and summary["Pr@0.9"] == 0.5
    assert (summary["total_intersection"], summary["total_union"], summary["num_samples"]) == (3, 5, 2)
    assert acc.summary(percent=True)["oIoU"] == pytest.approx(60.0)


def test_matches_reference_on_random_masks():
    rng = np.random.default_rng(0)
    preds, gts = random_pairs(rng, 60)
    ours = compute_metrics(preds, gts)
    ref = reference_metrics(preds, gts)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_accepts_torch_tensors():
    rng = np.random.default_rng(1)
    pred, gt = random_pairs(rng, 1)
    assert intersection_union(torch.from_numpy(pred[0]), torch.from_numpy(gt[0])) == intersection_union(pred[0], gt[0])


def test_precision_threshold_is_inclusive_and_exact():
    acc = MetricAccumulator()
    acc.add(1, 2)  # IoU exactly 0.5
    acc.add(7, 10)  # IoU exactly 0.7
    acc.add(3, 5)  # IoU exactly 0.6
    acc.add(899_999, 1_000_000)  # just below 0.9
    acc.add(0, 0)  # empty union: IoU 0, never counts
    s = acc.summary()
    assert s["Pr@0.5"] == 4 / 5
    assert s["Pr@0.6"] == 3 / 5
    assert s["Pr@0.7"] == 2 / 5
    assert s["Pr@0.8"] == 1 / 5
    assert s["Pr@0.9"] == 0.0
    # Thresholds are configurable; the key uses the threshold as written.
    assert MetricAccumulator([SampleRecord("a", 1, 4)]).summary(thresholds=(0.25,))["Pr@0.25"] == 1.0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) != ground-truth shape \(3, 2\)"):
        intersection_union(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        intersection_union(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="different number"):
        compute_metrics([np.zeros((2, 2))], [])


def test_merge_equals_single_pass_and_order_does_not_matter():
    rng = np.random.default_rng(2)
    preds, gts = random_pairs(rng, 50)
    heatmaps = [rng.random((3, 4)) for _ in preds]
    single = MetricAccumulator()
    shards = [MetricAccumulator() for _ in range(3)]
    for k, (pred, gt, heat) in enumerate(zip(preds, gts, heatmaps)):
        single.add_masks(pred, gt, heatmap=heat, sample_id=f"s{k}")
        shards[k % 3].add_masks(pred, gt, heatmap=heat, sample_id=f"s{k}")
    merged = shards[0] + shards[1] + shards[2]
    assert merged.summary() == single.summary()  # bit-for-bit
    assert sum(shards).summary() == single.summary()
    # A run resumed from saved records (in another order) gives identical numbers.
    saved = [json.loads(json.dumps(r.to_dict())) for r in single.records]
    random.Random(0).shuffle(saved)
    assert MetricAccumulator(saved).summary() == single.summary()
    assert "point_accuracy" in single.summary() and single.summary()["num_point_samples"] == 50


def test_duplicate_sample_ids_are_rejected():
    a, b = MetricAccumulator(), MetricAccumulator()
    a.add(1, 2, sample_id="x")
    b.add(1, 2, sample_id="x")
    with pytest.raises(ValueError, match="already recorded"):
        a.add(1, 1, sample_id="x")
    with pytest.raises(ValueError, match="already recorded"):
        a.merge(b)
    assert "x" in a and len(a) == 1
    with pytest.raises(ValueError, match="intersection <= union"):
        a.add(3, 2)


def test_empty_accumulator():
    s = MetricAccumulator().summary()
    assert s["num_samples"] == 0 and math.isnan(s["oIoU"]) and math.isnan(s["mIoU"]) and math.isnan(s["Pr@0.5"])
    assert "point_accuracy" not in s


def test_argmax_in_mask_maps_cell_centres():
    gt = np.zeros((8, 8), bool)
    gt[4:8, 0:4] = True  # bottom-left quadrant
    heat = np.zeros((2, 2))
    heat[1, 0] = 1.0
    assert argmax_in_mask(heat, gt)
    heat = np.zeros((2, 2))
    heat[0, 1] = 1.0
    assert not argmax_in_mask(heat, gt)
    # Non-square scaling: a 3x5 heatmap on a 6x20 mask; cell (2, 4) centre -> pixel (5, 18).
    gt = np.zeros((6, 20), bool)
    gt[5, 18] = True
    heat = np.zeros((3, 5))
    heat[2, 4] = 5.0
    assert argmax_in_mask(heat, gt)
    gt[5, 18], gt[4, 16] = False, True  # cell (2, 4) covers rows 4-5, cols 16-19; centre is (5, 18)
    assert not argmax_in_mask(heat, gt)
    # Same resolution: identity.
    gt = np.eye(5, dtype=bool)
    assert argmax_in_mask(np.eye(5) * 2, gt)
    with pytest.raises(ValueError, match="NaN"):
        argmax_in_mask(np.full((2, 2), np.nan), gt)


def test_point_accuracy():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    inside, outside = np.zeros((2, 2)), np.zeros((2, 2))
    inside[0, 0] = outside[1, 1] = 1
    assert point_accuracy([inside, outside, inside, inside], [gt] * 4) == 0.75
    with pytest.raises(ValueError):
        point_accuracy([], [])


def test_resize_mask_nearest():
    mask = np.zeros((4, 6), bool)
    mask[:2, :3] = True
    np.testing.assert_array_equal(resize_mask(mask, (2, 2)), np.array([[1, 0], [0, 0]], bool))
    np.testing.assert_array_equal(resize_mask(resize_mask(mask, (8, 12)), (4, 6)), mask)


def naive_separability(features, fg, normalize=True):
    """Loop transcription of eqs. A1-A3 (after optional L2 normalisation of each feature)."""
    rows = []
    for row in features.tolist():
        norm = math.sqrt(sum(v * v for v in row)) if normalize else 1.0
        rows.append([v / norm for v in row])
    dim = len(rows[0])
    fg_rows = [r for r, f in zip(rows, fg) if f]
    bg_rows = [r for r, f in zip(rows, fg) if not f]
    mu_fg = [sum(r[d] for r in fg_rows) / len(fg_rows) for d in range(dim)]  # A1
    mu_bg = [sum(r[d] for r in bg_rows) / len(bg_rows) for d in range(dim)]
    s_fg = sum(sum((r[d] - mu_fg[d]) ** 2 for d in range(dim)) for r in fg_rows) / len(fg_rows)  # A2
    s_bg = sum(sum((r[d] - mu_bg[d]) ** 2 for d in range(dim)) for r in bg_rows) / len(bg_rows)
    return sum((mu_fg[d] - mu_bg[d]) ** 2 for d in range(dim)) / (s_fg + s_bg)  # A3


@pytest.mark.parametrize("normalize", [True, False])
def test_separability_matches_naive_transcription(normalize):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(40, 6))
    fg = rng.random(40) < 0.3
    features[fg] += 2.0
    expected = naive_separability(features, fg, normalize)
    assert separability_score(features, fg, normalize=normalize) == pytest.approx(expected, rel=1e-10)
    # (h, w) masks are flattened row-major, torch features work too.
    got = separability_score(torch.from_numpy(features), fg.reshape(5, 8), normalize=normalize)
    assert got == pytest.approx(expected, rel=1e-10)


def test_separability_scale_invariance_and_errors():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(20, 4))
    fg = np.arange(20) < 7
    scaled = features * rng.uniform(0.1, 10, size=(20, 1))  # per-row scaling
    assert separability_score(scaled, fg) == pytest.approx(separability_score(features, fg))
    with pytest.raises(ValueError, match="foreground and one background"):
        separability_score(features, np.ones(20, bool))
    with pytest.raises(ValueError, match="entries"):
        separability_score(features, np.ones(5, bool))
    twins = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert separability_score(twins, np.array([True, True, False])) == math.inf


# ----------------------------------------------------------------------------- published numbers

PAPERS = Path("/work/shared/papers")
PAPER_FILES = {
    published.IIE_RIS_PAPER: "early-semantic-grounding-iie-ris.txt",
    published.REFAM_PAPER: "refam.txt",
    published.REF_DIFF_PAPER: "ref-diff.txt",
}
DATASETS = {"refcoco", "refcoco+", "refcocog", "refcocog-google"}
SPLITS = {"val", "testA", "testB", "test"}


def test_published_tables_are_well_formed():
    assert published.PUBLISHED is published.IIE_RIS_TABLE1.results
    table1 = published.IIE_RIS_TABLE1
    for method in ("RefAM", "Ref-Diff", "HybridGL", "Ours (FLUX.2-klein 9B)", "Ours (Step1X-Edit 12B)"):
        for metric in ("oIoU", "mIoU"):
            assert len(table1.results[method][metric]) == 8, (method, metric)
    assert table1.get("Ours (Step1X-Edit 12B)", "oIoU", "refcoco", "val") == 53.94
    assert table1.get("RefAM", "mIoU", "refcocog", "test") == 48.35
    assert table1.get("CaR", "oIoU", "refcoco", "val") is None
    for table in published.TABLES.values():
        assert table.paper in PAPER_FILES
        for method, metrics in table.results.items():
            for metric, cells in metrics.items():
                assert metric in ("oIoU", "mIoU")
                for (dataset, split), value in cells.items():
                    assert dataset in DATASETS and split in SPLITS and 0 < value < 100


@pytest.mark.skipif(not PAPERS.is_dir(), reason="paper texts not available")
def test_published_numbers_appear_in_the_papers():
    """Each encoded row (one metric) appears as a run of numbers on one line of its paper."""

    def numbers(line):
        return re.findall(r"\d+\.\d\d", re.sub(r"<[^>]+>", "", line))

    for table in published.TABLES.values():
        lines = [numbers(line) for line in (PAPERS / PAPER_FILES[table.paper]).read_text().splitlines()]
        for method, metrics in table.results.items():
            interleaved = []
            if set(metrics) == {"oIoU", "mIoU"} and list(metrics["oIoU"]) == list(metrics["mIoU"]):
                for key in metrics["oIoU"]:  # tables printing oIoU, mIoU pairs per dataset
                    interleaved += [f"{metrics['oIoU'][key]:.2f}", f"{metrics['mIoU'][key]:.2f}"]
            runs = [[f"{v:.2f}" for v in cells.values()] for cells in metrics.values()]
            for run in runs:
                found = any(line[i : i + len(run)] == run for line in lines for i in range(len(line)))
                found_pair = interleaved and any(
                    line[i : i + len(interleaved)] == interleaved for line in lines for i in range(len(line))
                )
                assert found or found_pair, (table.key, method, run)


def test_comparison_table():
    text = published.comparison_table({("refcoco", "val"): {"oIoU": 50.0, "mIoU": float("nan")}}, label="mine")
    assert "| oIoU | RefAM | 46.91 |" in text
    assert "| oIoU | **mine** | 50.00 |" in text and "| mIoU | **mine** | - |" in text
