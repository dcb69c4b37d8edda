"""SAM component on a tiny random SamConfig of the real transformers classes (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editseg.components.sam import (
    ProposalConfig,
    SamComponent,
    best_mask,
    box_iou,
    mask_to_box,
    nms,
    point_grid,
    stability_score,
)
from editseg.components.tiny import TINY_SAM, build_tiny_sam
from editseg.errors import ConfigError, ModelNotFoundError


@pytest.fixture(scope="module")
def sam():
    return SamComponent.from_pretrained(TINY_SAM, device="cpu")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(1)
    return (rng.random((40, 52, 3)) * 255).astype(np.uint8)


def _reference(sam, image, **prompts):
    """The transformers way: processor → SamModel(pixel_values, prompts) → post_process_masks."""
    inputs = sam.processor(images=image, return_tensors="pt", **prompts)
    keys = ("pixel_values", "input_points", "input_labels", "input_boxes")
    with torch.no_grad():
        out = sam.model(**{k: v.float() if k != "input_labels" else v for k, v in inputs.items() if k in keys},
                        multimask_output=prompts.pop("multimask", True))
    logits = sam.processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False)[0]
    return logits, out.iou_scores


def test_coordinates_match_sam_processor(sam, image):
    sam.set_image(image)
    pts = [[3.0, 7.5], [51.0, 39.0]]
    inputs = sam.processor(images=image, input_points=[[pts]], return_tensors="pt")
    np.testing.assert_allclose(sam.to_model_coordinates(np.array(pts)).numpy(), inputs["input_points"][0, 0].numpy(), rtol=1e-6)
    assert sam.image_size == (52, 40)


def test_predict_points_matches_transformers_pipeline(sam, image):
    sam.set_image(image)
    pts, labels = [[10, 12], [40, 30]], [1, 0]
    masks, scores = sam.predict_points(pts, labels)
    ref_logits, ref_scores = _reference(sam, image, input_points=[[pts]], input_labels=[[labels]])
    assert masks.shape == (3, 40, 52) and masks.dtype == bool and scores.shape == (3,)
    np.testing.assert_allclose(scores, ref_scores[0, 0].numpy(), atol=1e-5)
    agree = (masks == (ref_logits[0] > 0).numpy()).mean()
    assert agree > 0.999
    mask, score = best_mask(masks, scores)
    assert score == scores.max() and (mask == masks[int(np.argmax(scores))]).all()
    single, single_scores = sam.predict_points(pts, labels, multimask=False)
    assert single.shape == (1, 40, 52) and single_scores.shape == (1,)


def test_predict_box_matches_transformers_pipeline(sam, image):
    sam.set_image(image)
    box = [5, 6, 30, 33]
    masks, scores = sam.predict_box(box)
    ref_logits, ref_scores = _reference(sam, image, input_boxes=[[box]], multimask=False)
    assert masks.shape == (1, 40, 52)
    np.testing.assert_allclose(scores, ref_scores[0, 0].numpy(), atol=1e-5)
    assert (masks == (ref_logits[0] > 0).numpy()).mean() > 0.999
    with pytest.raises(ConfigError):
        sam.predict_box([30, 6, 5, 33])


def test_stability_score_against_naive():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 9, 11)).astype(np.float32) * 2
    got = stability_score(torch.from_numpy(logits), 0.0, 1.0).numpy()
    naive = [(l > 1).sum() / (l > -1).sum() for l in logits]
    np.testing.assert_allclose(got, naive, rtol=1e-6)


def test_mask_to_box_against_naive():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 13, 17)) > 0.93
    masks[0] = False
    boxes = mask_to_box(torch.from_numpy(masks)).numpy()
    for m, b in zip(masks, boxes):
        if not m.any():
            assert tuple(b) == (0, 0, 0, 0)
            continue
        ys, xs = np.nonzero(m)
        assert tuple(b) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_nms_against_naive():
    rng = np.random.default_rng(3)
    xy = rng.random((40, 2)) * 50
    wh = rng.random((40, 2)) * 30 + 1
    boxes = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
    scores = torch.tensor(rng.random(40), dtype=torch.float32)

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    order = sorted(range(40), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(iou(boxes[i].tolist(), boxes[j].tolist()) <= 0.5 for j in keep):
            keep.append(i)
    assert nms(boxes, scores, 0.5).tolist() == keep
    assert box_iou(boxes[:3], boxes[:3]).diagonal().allclose(torch.ones(3))


def test_point_grid():
    grid = point_grid(4)
    assert grid.shape == (16, 2)
    np.testing.assert_allclose(grid[:4, 0], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(grid[:4, 1], 0.125)
    np.testing.assert_allclose(grid[4, 1], 0.375)


def test_proposals_against_naive_generator(sam, image):
    sam.set_image(image)
    config = ProposalConfig(points_per_side=3, points_per_batch=4, pred_iou_thresh=-1.0, stability_score_thresh=0.2,
                            box_nms_thresh=0.6)
    got = sam.proposals(config)
    # naive: every grid point alone through the transformers pipeline, filter, greedy NMS
    candidates = []
    for x, y in point_grid(3) * np.array([52, 40]):
        logits, scores = _reference(sam, image, input_points=[[[[x, y]]]])
        for k in range(3):
            lg = logits[0, k].numpy()
            stab = (lg > 1).sum() / max((lg > -1).sum(), 1)
            m = lg > 0
            if stab > 0.2 and m.any():
                candidates.append((float(scores[0, 0, k]), m))
    boxes = mask_to_box(torch.from_numpy(np.stack([m for _, m in candidates]))).float()
    keep = nms(boxes, torch.tensor([s for s, _ in candidates]), 0.6)
    assert len(got) == len(keep) > 0
    for proposal, index in zip(got, keep.tolist()):
        assert abs(proposal["score"] - candidates[index][0]) < 1e-5
        assert (proposal["mask"] == candidates[index][1]).mean() > 0.999
        assert proposal["area"] == int(proposal["mask"].sum())
    assert [p["score"] for p in got] == sorted((p["score"] for p in got), reverse=True)


def test_proposals_default_filters_drop_low_quality(sam, image):
    sam.set_image(image)
    # Random weights predict IoU ~0: SAM's default 0.88 threshold keeps nothing.
    assert sam.proposals(points_per_side=2) == []


def test_errors(tmp_path):
    fresh = SamComponent(*build_tiny_sam())
    with pytest.raises(ConfigError):
        fresh.predict_points([[1, 1]])
    with pytest.raises(ModelNotFoundError, match="hf download"):
        SamComponent.from_pretrained(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ModelNotFoundError, match="SAM"):
        SamComponent.from_pretrained(str(tmp_path), device="cpu")


def test_loads_a_saved_folder(tmp_path, image):
    model, processor = build_tiny_sam()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = SamComponent.from_pretrained(str(tmp_path), device="cpu")
    reference = SamComponent(model, processor)
    loaded.set_image(image)
    reference.set_image(image)
    a, sa = loaded.predict_points([[20, 20]])
    b, sb = reference.predict_points([[20, 20]])
    assert (a == b).all() and np.allclose(sa, sb)
