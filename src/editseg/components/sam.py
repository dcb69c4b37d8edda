"""SAM (Segment Anything) as a component, on transformers' ``SamModel`` / ``SamProcessor``.

    sam = SamComponent.from_pretrained("facebook/sam-vit-huge", device="cuda")
    sam.set_image(rgb)                                   # encodes once
    masks, scores = sam.predict_points([[320, 240]])     # bool (3, H, W), predicted IoUs (3,)
    mask, score = best_mask(masks, scores)
    masks, scores = sam.predict_box((10, 20, 200, 180))
    proposals = sam.proposals()                          # automatic "everything" masks

Coordinates are input pixels, ``(x, y)``; boxes are ``(x0, y0, x1, y1)``. Prompts are mapped to
the model's input frame exactly as ``SamProcessor`` does (longest side resized to the model's input
side, rounded half up), masks are brought back with ``SamProcessor.post_process_masks``.

Automatic proposals follow SAM's automatic mask generator for one crop (the whole image): a
regular grid of single-point prompts, three masks each, kept when the predicted IoU exceeds
``pred_iou_thresh`` and the stability score (IoU of the mask thresholded at ``±offset`` around
the mask threshold, on full-resolution logits) exceeds ``stability_score_thresh``, then greedy
non-maximum suppression on the masks' boxes at ``box_nms_thresh``. Not implemented: multi-crop
layers and the removal of small disconnected regions / holes (``min_mask_region_area``, which
needs OpenCV); ``min_area`` here drops whole masks below that many pixels instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from .loading import PretrainedComponent
from .tiny import TINY_SAM, build_tiny_sam

SAM_ALIASES = {
    "sam": "facebook/sam-vit-huge",
    "sam-vit-huge": "facebook/sam-vit-huge",
    "sam-vit-large": "facebook/sam-vit-large",
    "sam-vit-base": "facebook/sam-vit-base",
}
DEFAULT_SAM = "facebook/sam-vit-huge"

__all__ = [
    "DEFAULT_SAM",
    "SAM_ALIASES",
    "ProposalConfig",
    "SamComponent",
    "best_mask",
    "box_iou",
    "mask_to_box",
    "nms",
    "point_grid",
    "stability_score",
]


@dataclass(frozen=True)
class ProposalConfig:
    """Settings of the automatic proposals (defaults: SAM's automatic mask generator)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    mask_threshold: float = 0.0
    min_area: int = 0


def point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) cell centres of a regular grid on [0, 1]^2, x varying fastest (as SAM's generator)."""
    offset = 1.0 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def stability_score(logits: torch.Tensor, mask_threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU between the masks ``logits > t + offset`` and ``logits > t - offset`` (the first lies in the second)."""
    inner = (logits > mask_threshold + offset).flatten(-2).sum(-1).float()
    outer = (logits > mask_threshold - offset).flatten(-2).sum(-1).float()
    return torch.where(outer > 0, inner / outer.clamp_min(1), torch.zeros_like(outer))


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes ``x0, y0, x1, y1`` (inclusive pixel indices) of (..., H, W) bool masks; 0s for empty masks."""
    height, width = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    y = torch.arange(height, device=masks.device)
    x = torch.arange(width, device=masks.device)
    y1 = torch.where(rows, y, -1).amax(-1)
    x1 = torch.where(cols, x, -1).amax(-1)
    y0 = torch.where(rows, y, height).amin(-1)
    x0 = torch.where(cols, x, width).amin(-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) IoU of xyxy boxes, areas ``(x1 - x0) * (y1 - y0)`` (torchvision's convention)."""
    a, b = a.float(), b.float()
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy NMS, by decreasing score (a box is dropped when IoU > threshold)."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    overlaps = box_iou(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def best_mask(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
    """The multimask output with the highest predicted IoU (SAM's own choice of one mask)."""
    index = int(np.argmax(scores))
    return masks[index], float(scores[index])


class SamComponent(PretrainedComponent):
    """A SAM predictor: encode an image once, then prompt it with points, boxes or a point grid."""

    kind = "sam"

    def __init__(self, model, processor, name: str = "", is_random: bool = False):
        super().__init__(model, processor, name, is_random)
        self._embeddings: torch.Tensor | None = None
        self._original: tuple[int, int] | None = None  # (H, W)
        self._reshaped: tuple[int, int] | None = None  # (h, w) inside the padded model input

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_SAM, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> "SamComponent":
        """Load SAM weights (hub id, alias such as ``sam-vit-base``, local folder or ``tiny-random-sam``)."""
        return cls.load(
            model, device, dtype, label="SAM model", aliases=SAM_ALIASES,
            classes=("SamModel", "SamProcessor"), tiny=TINY_SAM, build_tiny=build_tiny_sam,
        )  # fmt: skip

    @property
    def input_side(self) -> int:
        return int(self.processor.image_processor.size["longest_edge"])

    # -- image -----------------------------------------------------------------------------------
    @torch.no_grad()
    def set_image(self, image: Image.Image | np.ndarray) -> None:
        """Encode an RGB image (PIL or uint8 (H, W, 3)); prompts then refer to its pixels."""
        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
        self._embeddings = self.model.get_image_embeddings(pixels)
        self._original = tuple(int(v) for v in inputs["original_sizes"][0])
        self._reshaped = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image."""
        return None if self._original is None else (self._original[1], self._original[0])

    def _require_image(self) -> None:
        if self._embeddings is None:
            raise ConfigError("SAM has no image: call set_image(image) first.")

    def to_model_coordinates(self, xy: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Input-pixel ``(..., 2)`` x, y → the model's input frame (as ``SamProcessor`` maps prompts)."""
        self._require_image()
        old_h, old_w = self._original
        new_h, new_w = self._reshaped
        xy = torch.as_tensor(np.asarray(xy, dtype=np.float64)).clone()
        xy[..., 0] *= new_w / old_w
        xy[..., 1] *= new_h / old_h
        return xy.float()

    # -- prompting -------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        multimask: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (P, k, h, w) and predicted IoUs (P, k) for P prompts.

        ``points`` (P, n, 2) and ``boxes`` (P, 4) are in the model frame (see
        :meth:`to_model_coordinates`); ``labels`` (P, n): 1 foreground, 0 background.
        """
        self._require_image()
        kwargs = {"image_embeddings": self._embeddings, "multimask_output": multimask}
        if points is not None:
            points = torch.as_tensor(points, dtype=torch.float32)
            if labels is None:
                labels = torch.ones(points.shape[:2], dtype=torch.long)
            kwargs["input_points"] = points[None].to(device=self.device, dtype=self.dtype)
            kwargs["input_labels"] = torch.as_tensor(labels, dtype=torch.long)[None].to(self.device)
        if boxes is not None:
            kwargs["input_boxes"] = torch.as_tensor(boxes, dtype=torch.float32)[None].to(device=self.device, dtype=self.dtype)
        if points is None and boxes is None:
            raise ConfigError("SAM needs a point or a box prompt.")
        output = self.model(**kwargs)
        return output.pred_masks[0].float(), output.iou_scores[0].float()

    def upscale(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(P, k, h, w) low-resolution logits → (P, k, H, W) logits at the input resolution."""
        (logits,) = self.processor.post_process_masks(
            [low_res_logits], [self._original], [self._reshaped], binarize=False
        )
        return logits

    def predict_points(
        self, points_xy: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[int] | None = None, multimask: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks for one prompt made of all ``points_xy`` (input pixels): bool (k, H, W) and predicted IoUs (k,),
        k = 3 with ``multimask`` (SAM's order; pick one with :func:`best_mask`) else 1."""
        points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        if len(points) == 0:
            raise ConfigError("predict_points needs at least one point.")
        labels = np.ones(len(points), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(points),):
            raise ConfigError(f"{len(points)} points but labels of shape {labels.shape}.")
        low, scores = self.decode(self.to_model_coordinates(points)[None], torch.from_numpy(labels)[None], multimask=multimask)
        return self._to_masks(low)[0], scores[0].cpu().numpy()

    def predict_box(
        self,
        box: Sequence[float],
        points_xy: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | None = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks for a box ``(x0, y0, x1, y1)`` in input pixels, optionally with points: bool (k, H, W), IoUs (k,)."""
        box = np.asarray(box, dtype=np.float64).reshape(4)
        if box[2] < box[0] or box[3] < box[1]:
            raise ConfigError(f"Box {tuple(box)} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1.")
        boxes = self.to_model_coordinates(box.reshape(2, 2)).reshape(1, 4)
        points = label_tensor = None
        if points_xy is not None and len(points_xy) > 0:
            pts = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
            points = self.to_model_coordinates(pts)[None]
            lab = np.ones(len(pts), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
            label_tensor = torch.from_numpy(lab)[None]
        low, scores = self.decode(points, label_tensor, boxes, multimask=multimask)
        return self._to_masks(low)[0], scores[0].cpu().numpy()

    def _to_masks(self, low_res_logits: torch.Tensor, threshold: float = 0.0) -> np.ndarray:
        return (self.upscale(low_res_logits) > threshold).cpu().numpy()

    # -- automatic proposals ---------------------------------------------------------------------
    def proposals(self, config: ProposalConfig | None = None, **overrides) -> list[dict]:
        """Automatic masks over a point grid, filtered and de-duplicated (see the module docstring).

        Returns dicts ``mask`` (bool H, W), ``score`` (predicted IoU), ``stability``, ``box``
        (x0, y0, x1, y1 inclusive), ``area``, ``point`` (x, y), by decreasing score.
        """
        self._require_image()
        config = ProposalConfig(**{**(config or ProposalConfig()).__dict__, **overrides})
        height, width = self._original
        grid = point_grid(config.points_per_side) * np.array([width, height], dtype=np.float64)
        kept: list[dict] = []
        for start in range(0, len(grid), config.points_per_batch):
            pixels = grid[start : start + config.points_per_batch]
            low, ious = self.decode(self.to_model_coordinates(pixels)[:, None, :], multimask=True)
            logits = self.upscale(low).flatten(0, 1)  # (P*3, H, W)
            ious = ious.flatten()
            keep = torch.ones_like(ious, dtype=torch.bool)
            if config.pred_iou_thresh > 0:
                keep &= ious > config.pred_iou_thresh
            stability = stability_score(logits, config.mask_threshold, config.stability_score_offset)
            if config.stability_score_thresh > 0:
                keep &= stability > config.stability_score_thresh
            masks = logits[keep] > config.mask_threshold
            boxes = mask_to_box(masks)
            sources = torch.arange(len(ious))[keep.cpu()] // low.shape[1]
            for mask, score, stab, box, source in zip(masks, ious[keep], stability[keep], boxes, sources):
                area = int(mask.sum())
                if area == 0 or area < config.min_area:
                    continue
                kept.append({
                    "mask": mask.cpu().numpy(), "score": float(score), "stability": float(stab),
                    "box": tuple(int(v) for v in box.tolist()), "area": area,
                    "point": tuple(float(v) for v in pixels[int(source)]),
                })
        if not kept:
            return []
        order = nms(
            torch.tensor([p["box"] for p in kept], dtype=torch.float32),
            torch.tensor([p["score"] for p in kept]),
            config.box_nms_thresh,
        )
        return [kept[int(i)] for i in order]
