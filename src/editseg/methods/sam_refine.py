"""``--refine sam``: sharpen a coarse mask with SAM (editseg's extension, not part of any paper).

The coarse mask (and, when given, the method's heat map, e.g. early grounding's RAM) becomes a
prompt: the mask's box plus positive points at the heat map's highest pixels inside the mask
(the mask pixel nearest its centroid when there is no map). SAM returns three masks; the one
that overlaps the coarse mask most (IoU) is kept, SAM's predicted IoU breaking ties. An empty
coarse mask falls back to the heat map above ``heat_threshold``; if that is empty too, nothing
is refined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..components.sam import SamComponent

CHOICES = ("coarse-iou", "sam-score")


@dataclass(frozen=True)
class SamRefineSettings:
    """``points``: positive points (heat-map peaks at least ``spacing`` of the box apart);
    ``choose``: ``coarse-iou`` (default) or ``sam-score`` (SAM's own best of three)."""

    points: int = 1
    spacing: float = 0.25
    choose: str = "coarse-iou"
    heat_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.choose not in CHOICES:
            raise ValueError(f"choose must be one of {CHOICES}, got {self.choose!r}")
        if self.points < 0:
            raise ValueError("points must be >= 0")


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` with exclusive ends, in pixels, of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def prompt_points(mask: np.ndarray, heat: np.ndarray | None, count: int, spacing: float) -> list[tuple[float, float]]:
    """Positive points (x, y) at pixel centres inside ``mask`` (see the module docstring)."""
    if count == 0:
        return []
    ys, xs = np.nonzero(mask)
    if heat is None:
        cy, cx = ys.mean(), xs.mean()
        i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        return [(xs[i] + 0.5, ys[i] + 0.5)]
    x0, y0, x1, y1 = mask_box(mask)
    radius = spacing * max(x1 - x0, y1 - y0)
    order = np.argsort(-heat[ys, xs], kind="stable")
    chosen: list[tuple[int, int]] = []
    for i in order:
        if all((xs[i] - x) ** 2 + (ys[i] - y) ** 2 >= radius**2 for x, y in chosen):
            chosen.append((int(xs[i]), int(ys[i])))
            if len(chosen) == count:
                break
    return [(x + 0.5, y + 0.5) for x, y in chosen]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def refine_with_sam(
    sam: SamComponent, mask: np.ndarray, heat: np.ndarray | None = None, settings: SamRefineSettings | None = None
) -> tuple[np.ndarray, dict]:
    """The refined mask and what was done (``box``, ``points``, ``sam_scores``, ``chosen``,
    ``coarse_iou``; ``refined`` False when there was nothing to prompt with). ``sam`` must hold
    the same image (:meth:`SamComponent.set_image`)."""
    settings = settings or SamRefineSettings()
    coarse = mask.astype(bool)
    if not coarse.any() and heat is not None:
        coarse = heat >= settings.heat_threshold
    if not coarse.any():
        return mask.astype(bool), {"refined": False}
    box = mask_box(coarse)
    points = prompt_points(coarse, heat, settings.points, settings.spacing)
    masks, scores = sam.predict_box(box, points_xy=points or None, multimask=True)
    if settings.choose == "sam-score":
        chosen = int(np.argmax(scores))
    else:
        ious = [mask_iou(m, coarse) for m in masks]
        chosen = max(range(len(masks)), key=lambda i: (ious[i], scores[i]))
    info = {
        "refined": True, "box": box, "points": points, "sam_scores": [float(s) for s in scores], "chosen": chosen,
        "coarse_iou": mask_iou(masks[chosen], coarse),
    }
    return masks[chosen], info


def refine_result(sam: SamComponent, result, settings: SamRefineSettings | None = None, heat_map: str = "ram"):
    """Refine a result in place with :func:`refine_with_sam`: ``result.mask`` becomes SAM's mask, the
    coarse mask is kept as ``maps["coarse"]`` (0/1 float) and what was done as ``config["sam_refine"]``.
    The heat map is ``result.maps[heat_map]`` when present (early grounding's RAM)."""
    maps = getattr(result, "maps", None) or {}
    heat = maps.get(heat_map)
    refined, info = refine_with_sam(sam, result.mask, heat, settings)
    if hasattr(result, "maps"):
        result.maps = {**maps, "coarse": result.mask.astype(np.float32)}
    result.config = {**(result.config or {}), "sam_refine": {"sam": getattr(sam, "name", ""), **info}}
    result.mask = refined
    if hasattr(result, "box") and refined.any():
        result.box = mask_box(refined)
    return result
