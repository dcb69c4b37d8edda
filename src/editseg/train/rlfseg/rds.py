"""SAM-driven label refinement (§3.3, eq. 3 and Algorithm 1); the dynamic selection (eq. 4) is
:func:`editseg.methods.rlfseg_flow.dynamic_selection`.

- Anchors (eq. 3): ``P = KMeans({(x, y) | M0(x, y) > 0.5}, N)``, fixed for all iterations.
- Iteration (Algorithm 1): ``M_t = Φ_SAM(P, M_{t-1})``. SAM is prompted with the N anchor points
  (foreground) and the bounding box of ``M_{t-1}``: the SAM component takes points and boxes, not
  SAM's low-resolution mask prompt, so the previous mask enters through its box (our choice).
- Stopping: the paper's text says the loop ends "once the IoU score converges", Algorithm 1 as
  typeset says "until IoU(M_t, M_{t-1}) < τ". ``stop="converged"`` (default) ends when
  ``IoU(M_t, M_{t-1}) >= τ``; ``stop="as-typeset"`` ends when it is ``< τ``. Either way at most
  ``T_max`` iterations. N, T_max and τ are not given in the paper: defaults 5, 5, 0.95.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image


class SamPredictor(Protocol):
    """What RDS needs of SAM (``editseg.components.sam.SamComponent`` provides it)."""

    def set_image(self, image: Image.Image | np.ndarray) -> None: ...

    def predict_box(self, box: Sequence[float], points_xy=None, labels=None, multimask: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class RefineConfig:
    anchors: int = 5  # N
    max_iterations: int = 5  # T_max
    tau: float = 0.95
    stop: str = "converged"  # or "as-typeset"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stop not in ("converged", "as-typeset"):
            raise ValueError(f"stop must be 'converged' or 'as-typeset', got {self.stop!r}")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def kmeans(points: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding: (k, d) centres of ``points`` (n, d); k is capped at n."""
    points = np.asarray(points, dtype=np.float64)
    k = min(k, len(points))
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        distance = np.min(((points[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = distance.sum()
        centres.append(points[rng.choice(len(points), p=distance / total)] if total > 0 else points[rng.integers(len(points))])
    centres = np.asarray(centres)
    for _ in range(iterations):
        labels = ((points[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        moved = np.array([points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
        if np.allclose(moved, centres):
            break
        centres = moved
    return centres


def anchor_points(mask: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Eq. 3: (n, 2) k-means centres ``(x, y)`` of the foreground pixels of ``mask``."""
    ys, xs = np.nonzero(np.asarray(mask, dtype=np.float32) > 0.5)
    return kmeans(np.stack([xs, ys], axis=1), n, seed=seed)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` inclusive pixel bounds of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def refine_mask(sam: SamPredictor, image: Image.Image | np.ndarray, mask: np.ndarray,
                config: RefineConfig = RefineConfig(), image_is_set: bool = False) -> tuple[np.ndarray, int]:
    """Algorithm 1: ``(M_refine, iterations run)``. An empty ``M0`` or an empty SAM answer keeps the last mask."""
    previous = np.asarray(mask, dtype=bool)
    if not previous.any():
        return previous, 0
    if not image_is_set:
        sam.set_image(image)
    points = anchor_points(previous, config.anchors, config.seed)
    iterations = 0
    for iterations in range(1, config.max_iterations + 1):
        masks, _ = sam.predict_box(mask_box(previous), points_xy=points, multimask=False)
        current = np.asarray(masks[0], dtype=bool)
        if not current.any():
            return previous, iterations
        overlap = mask_iou(current, previous)
        previous = current
        if (overlap >= config.tau) if config.stop == "converged" else (overlap < config.tau):
            break
    return previous, iterations


class RefinedLabels:
    """``M_refine`` per sample, computed once with SAM and cached as PNGs in ``folder``
    (``<sample_id>.png``), so later epochs and resumed runs reuse them."""

    def __init__(self, sam: SamPredictor | None, folder: str | Path, config: RefineConfig = RefineConfig()):
        self.sam, self.folder, self.config = sam, Path(folder), config
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, sample_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)
        return self.folder / f"{safe}.png"

    def get(self, sample_id: str, image: Image.Image, mask: np.ndarray) -> np.ndarray:
        path = self.path(sample_id)
        if path.is_file():
            return np.asarray(Image.open(path)) > 0
        if self.sam is None:
            raise FileNotFoundError(f"No refined label cached at {path} and no SAM model given (--sam).")
        refined, _ = refine_mask(self.sam, image, mask, self.config)
        Image.fromarray(refined.astype(np.uint8) * 255).save(path)
        return refined
