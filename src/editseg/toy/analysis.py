"""Baselines, ceilings and diagnostics shown beside the paper's readout on the shapes world.

- :func:`geometry_ceilings`: what a perfect token-level answer can reach once mapped back to
  pixels: (a) the ground-truth token coverage resampled to pixels exactly as the method resamples
  its maps (``ImageGeometry.to_input``, bilinear) and cut at 0.5; (b) FSL (eqs. 5-6) with the
  ground-truth token region as the prototype region M and ideal features (each token's target
  coverage), scored and resampled as the method does.
- :func:`fsl_with_true_region`: FSL with the model's own features but the ground-truth region as
  M: how good the features are, independently of where the RAM points.
- :func:`edit_baseline`: the model's own first-step edit: edit accuracy (the most changed object is
  the referent), and the edit-difference map ``|x0 - source|`` as a segmentation baseline
  (min-max normalised, resampled, cut at 0.5; point accuracy of its argmax).
- :func:`shifted_expressions`: each sample's expression replaced by the next sample's (an oracle:
  a model that reads the words must score worse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shapes import ShapesSample
from ..evaluation.metrics import argmax_in_mask
from ..geometry import ImageGeometry
from ..methods.early_grounding import foreground_score, minmax, prototypes


@dataclass
class BaselineScores:
    """A row that is not the method: mIoU and point accuracy of some map (NaN where undefined)."""

    label: str
    n: int
    mIoU: float
    point_accuracy: float = float("nan")
    object_accuracy: float = float("nan")


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def token_coverage(mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols) fraction of each token's pixel patch inside ``mask`` (square patches)."""
    rows, cols = grid
    height, width = mask.shape
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    return m.reshape(rows, height // rows, cols, width // cols).mean(dim=(1, 3))


def geometry_ceilings(samples: Sequence[ShapesSample], patch: int) -> list[BaselineScores]:
    """Ceilings (a) and (b) of the module docstring for tokens of ``patch`` pixels."""
    upsampled, fsl = [], []
    for sample in samples:
        size = sample.mask.shape[0]
        geometry = ImageGeometry((size, size), (size, size), (0, 0, size, size), patch)
        cover = token_coverage(sample.mask, geometry.grid)
        upsampled.append(_iou((geometry.to_input(cover[None])[0] > 0.5).numpy(), sample.mask))
        region = cover > 0.5
        if not region.any():
            region = cover == cover.max()
        features = F.normalize(torch.stack([cover, 1 - cover], dim=-1).reshape(1, -1, 2), dim=-1)
        fg, bg = prototypes(features, region.reshape(1, -1))
        score = foreground_score(features, fg, bg).view(1, *geometry.grid)
        fsl.append(_iou((geometry.to_input(score)[0] > 0).numpy(), sample.mask))
    return [
        BaselineScores("ceiling (a): true token coverage, resampled, > 0.5", len(samples), float(np.mean(upsampled)), 1.0),
        BaselineScores("ceiling (b): FSL, true region as M, ideal features", len(samples), float(np.mean(fsl)), 1.0),
    ]


def fsl_with_true_region(segmenter, samples: Sequence[ShapesSample], feature_block: int | None = None) -> BaselineScores:
    """FSL with the model's clean-token features at ``feature_block`` and M = true tokens (coverage > 0.5)."""
    from PIL import Image

    from ..probing.recorder import ProbePlan

    backbone = segmenter.backbone
    block = backbone.default_feature_block if feature_block is None else feature_block
    ious = []
    for sample in samples:
        image = backbone.prepare_image(Image.fromarray(sample.image))
        text = backbone.encode_text([sample.expression], [sample.instruction], image=image)
        plan = ProbePlan(layout=backbone.layout_for(image, text), prompt_mask=torch.zeros(1, text.text_len),
                         attention_blocks=frozenset({block}), features={"attn": frozenset({block})})
        recorder = backbone.probe_forward(image, text, plan)
        features = F.normalize(recorder.features[("attn", block)].float(), dim=-1)
        cover = token_coverage(sample.mask, image.geometry.grid)
        region = cover > 0.5
        if not region.any():
            region = cover == cover.max()
        fg, bg = prototypes(features, region.reshape(1, -1))
        score = foreground_score(features, fg, bg).view(1, *image.geometry.grid)
        ious.append(_iou((image.geometry.to_input(score)[0] > 0).cpu().numpy(), sample.mask))
    return BaselineScores(f"FSL, true region as M, model features (block {block})", len(samples), float(np.mean(ious)))


def edit_baseline(backbone, samples: Sequence[ShapesSample], seed: int = 0) -> BaselineScores:
    """The model's own first-step edit as a segmenter: ``|x0 - source|`` per token (the method's exact
    inputs and noise), min-max normalised, resampled like the maps and cut at 0.5; point accuracy
    of its argmax; object accuracy = the referent is the object with the largest mean change."""
    from PIL import Image

    ious, points, objects = [], [], []
    for sample in samples:
        image = backbone.prepare_image(Image.fromarray(sample.image))
        text = backbone.encode_text([sample.expression], [sample.instruction], image=image, align=False)
        predicted = backbone.first_step_clean_estimate(image, text, seed)
        clean = image.tensors["latents"].to(predicted.device)
        change = (predicted - clean).abs().mean(-1)[0].view(*image.geometry.grid).float().cpu()
        normalised = minmax(change[None])
        pixels = image.geometry.to_input(normalised)[0].numpy()
        ious.append(_iou(pixels > 0.5, sample.mask))
        points.append(argmax_in_mask(change.numpy(), sample.mask))
        raw = image.geometry.to_input(change[None])[0].numpy()
        means = [raw[m].mean() if m.any() else -np.inf for m in sample.object_masks]
        objects.append(int(np.argmax(means)) == sample.target_index)
    return BaselineScores("baseline: the model's own edit |x0 - source| (> 0.5)", len(samples),
                          float(np.mean(ious)), float(np.mean(points)), float(np.mean(objects)))


def shifted_expressions(samples: Sequence[ShapesSample]) -> list[str]:
    """Sample ``i`` gets the expression of sample ``i + 1`` (cyclically), skipping identical ones."""
    out = []
    for i, sample in enumerate(samples):
        for k in range(1, len(samples)):
            other = samples[(i + k) % len(samples)].expression
            if other != sample.expression:
                out.append(other)
                break
        else:
            raise ValueError("every sample has the same expression")
    return out
