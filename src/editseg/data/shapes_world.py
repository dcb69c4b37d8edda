"""Scene layer of the synthetic shapes world: vocabulary, placement, backgrounds, rasterisation.

Conventions
-----------
* Geometry lives in *normalised* coordinates: fractions of the image side, x to the right,
  y downwards, (0, 0) the top-left corner. Rendering at 32, 64 or 128 pixels therefore gives the
  same layout, only sharper.
* Randomness is drawn only through ``rng.random`` (plain float64 draws), never through higher-level
  samplers, so streams do not depend on how a numpy version implements ``integers``/``choice``.
* Pixel values are computed with + - * / and floor only (no sin/exp), which IEEE 754 makes
  bit-identical across machines.
* Objects are painted as solid colour without anti-aliasing: each pixel is supersampled
  ``s x s`` times and belongs to the object when at least half of its samples fall inside the
  shape. The same boolean coverage is both the painted region and the ground-truth mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

#: Object colours: saturated, pairwise RGB distance >= 100.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 225, 50),
    "purple": (145, 55, 205),
    "orange": (250, 130, 0),
    "white": (245, 245, 245),
}

#: Object side (bounding-box edge) as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.2, "large": 0.32}

#: Background palette: muted, dark-to-mid tones, RGB distance >= 90 from every object colour.
BACKGROUND_PALETTE: tuple[tuple[int, int, int], ...] = (
    (78, 84, 92),
    (92, 88, 80),
    (70, 86, 80),
    (96, 96, 110),
    (60, 64, 72),
    (104, 98, 90),
    (82, 94, 104),
    (88, 78, 74),
)

#: Minimum free space between object bounding boxes, and between boxes and the image border.
OBJECT_GAP = 0.05
BORDER = 0.02

_STAR_INNER = 0.5
_SQUARE_HALF = 0.86
_CROSS_ARM = 0.34
_TRIANGLE = ((0.0, -1.0), (1.0, 0.8), (-1.0, 0.8))


def _star_vertices(points: int = 5, inner: float = _STAR_INNER) -> tuple[tuple[float, float], ...]:
    """Vertices of an upright star; rounded so tiny libm differences cannot leak into pixels."""
    verts = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        verts.append((round(radius * math.cos(angle), 12), round(radius * math.sin(angle), 12)))
    return tuple(verts)


_STAR = _star_vertices()


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    ``center`` is normalised (x, y); ``bbox`` is the pixel box ``(x0, y0, x1, y1)`` of the rendered
    mask (end-exclusive) and ``area`` its pixel count; both are ``None`` before rendering.
    """

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    bbox: tuple[int, int, int, int] | None = None
    area: int | None = None
    scale: float = 1.0  # the world's object scale: the side is ``SIZES[size] * scale``

    @property
    def side(self) -> float:
        """Bounding-box side in normalised units."""
        return SIZES[self.size] * self.scale

    def to_dict(self) -> dict:
        """JSON-serialisable description."""
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "center": [self.center[0], self.center[1]],
            "bbox": None if self.bbox is None else list(self.bbox),
            "area": self.area,
            "scale": self.scale,
        }


# ----------------------------------------------------------------------------- random helpers


def rand_index(rng: np.random.Generator, n: int) -> int:
    """Uniform integer in ``[0, n)`` from a single float draw."""
    return min(int(rng.random() * n), n - 1)


def pick(rng: np.random.Generator, items: Sequence, weights: Sequence[float] | None = None):
    """One item, uniformly or proportionally to ``weights``."""
    if weights is None:
        return items[rand_index(rng, len(items))]
    total = float(sum(weights))
    u = rng.random() * total
    acc = 0.0
    for item, weight in zip(items, weights):
        acc += weight
        if u < acc and weight > 0:
            return item
    return next(item for item, weight in zip(reversed(items), reversed(weights)) if weight > 0)


def shuffled(rng: np.random.Generator, items: Sequence) -> list:
    """Fisher-Yates shuffle driven by ``rng.random``."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = rand_index(rng, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


# ----------------------------------------------------------------------------- placement


def place_objects(
    rng: np.random.Generator,
    sides: Sequence[float],
    gap: float = OBJECT_GAP,
    border: float = BORDER,
    tries: int = 64,
) -> list[tuple[float, float]] | None:
    """Centres for axis-aligned boxes of the given sides, pairwise separated by ``gap``.

    Boxes are placed largest first; each gets ``tries`` uniform candidates and takes the first that
    fits. Returns ``None`` when some box does not fit (the caller resamples the scene).
    """
    order = sorted(range(len(sides)), key=lambda i: -sides[i])
    centres: dict[int, tuple[float, float]] = {}
    for i in order:
        side = sides[i]
        lo, hi = border + side / 2, 1.0 - border - side / 2
        cand = lo + (hi - lo) * rng.random((tries, 2))
        ok = np.ones(tries, dtype=bool)
        for j, (cx, cy) in centres.items():
            need = (side + sides[j]) / 2 + gap
            ok &= (np.abs(cand[:, 0] - cx) >= need) | (np.abs(cand[:, 1] - cy) >= need)
        hits = np.flatnonzero(ok)
        if hits.size == 0:
            return None
        centres[i] = (float(cand[hits[0], 0]), float(cand[hits[0], 1]))
    return [centres[i] for i in range(len(sides))]


# ----------------------------------------------------------------------------- rasterisation


def _inside_polygon(u: np.ndarray, v: np.ndarray, verts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points."""
    u, v = np.broadcast_arrays(u, v)
    inside = np.zeros(u.shape, dtype=bool)
    for k in range(len(verts)):
        (x0, y0), (x1, y1) = verts[k], verts[(k + 1) % len(verts)]
        if y0 == y1:
            continue
        straddles = (v < y0) != (v < y1)
        x_cross = x0 + (v - y0) * ((x1 - x0) / (y1 - y0))
        inside ^= straddles & (u < x_cross)
    return inside


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether local points ``(u, v)`` (shape spans ``[-1, 1]^2``) lie inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= _SQUARE_HALF) & (np.abs(v) <= _SQUARE_HALF)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= _CROSS_ARM) & (av <= 1.0)) | ((av <= _CROSS_ARM) & (au <= 1.0))
    if shape == "triangle":
        return _inside_polygon(u, v, _TRIANGLE)
    if shape == "star":
        return _inside_polygon(u, v, _STAR)
    raise ValueError(f"unknown shape {shape!r}")


def rasterize(obj: SceneObject, image_size: int, supersample: int = 4) -> np.ndarray:
    """Boolean ``image_size x image_size`` mask of the pixels ``obj`` paints."""
    n, s = image_size, supersample
    half = obj.side / 2
    cx, cy = obj.center
    x0 = max(int(math.floor((cx - half) * n)) - 1, 0)
    x1 = min(int(math.ceil((cx + half) * n)) + 1, n)
    y0 = max(int(math.floor((cy - half) * n)) - 1, 0)
    y1 = min(int(math.ceil((cy + half) * n)) + 1, n)
    offsets = (np.arange(s, dtype=np.float64) + 0.5) / s
    xs = ((np.arange(x0, x1, dtype=np.float64)[:, None] + offsets).ravel() / n - cx) / half
    ys = ((np.arange(y0, y1, dtype=np.float64)[:, None] + offsets).ravel() / n - cy) / half
    inside = shape_inside(obj.shape, xs[None, :], ys[:, None])
    counts = inside.reshape(y1 - y0, s, x1 - x0, s).sum(axis=(1, 3))
    mask = np.zeros((n, n), dtype=bool)
    mask[y0:y1, x0:x1] = 2 * counts >= s * s
    return mask


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """End-exclusive ``(x0, y0, x1, y1)`` of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ----------------------------------------------------------------------------- backgrounds


def _bilinear_upsample(grid: np.ndarray, n: int) -> np.ndarray:
    """Sample a ``k x k`` grid of knots spanning ``[0, 1]^2`` at the ``n x n`` pixel centres."""
    k = grid.shape[0]
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n * (k - 1)
    i0 = np.minimum(np.floor(pos).astype(np.int64), k - 2)
    w = pos - i0
    rows = grid[i0] * (1.0 - w)[:, None] + grid[i0 + 1] * w[:, None]
    return rows[:, i0] * (1.0 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


def _unit_direction(rng: np.random.Generator) -> tuple[float, float]:
    """A random direction, L1-normalised (no trigonometry)."""
    a, b = 2.0 * rng.random() - 1.0, 2.0 * rng.random() - 1.0
    norm = abs(a) + abs(b)
    return (1.0, 0.0) if norm < 1e-3 else (a / norm, b / norm)


def render_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A textured ``uint8`` background: palette gradient plus low-contrast noise and/or stripes.

    All scalar parameters are drawn before the per-pixel noise, so the large-scale look of a
    background is the same at every image size.
    """
    n = image_size
    first = rand_index(rng, len(BACKGROUND_PALETTE))
    second = (first + 1 + rand_index(rng, len(BACKGROUND_PALETTE) - 1)) % len(BACKGROUND_PALETTE)
    c0 = np.array(BACKGROUND_PALETTE[first], dtype=np.float64)
    c1 = np.array(BACKGROUND_PALETTE[second], dtype=np.float64)
    gx, gy = _unit_direction(rng)
    texture = pick(rng, ("plain", "noise", "stripes", "both"), (0.15, 0.35, 0.3, 0.2))
    noise_amp = 4.0 + 6.0 * rng.random()
    knots = 3 + rand_index(rng, 6)
    grid = (2.0 * rng.random((knots, knots)) - 1.0) * noise_amp
    sx, sy = _unit_direction(rng)
    period = 0.08 + 0.17 * rng.random()
    stripe_amp = 3.0 + 5.0 * rng.random()

    coords = (np.arange(n, dtype=np.float64) + 0.5) / n
    x, y = coords[None, :], coords[:, None]
    t = gx * x + gy * y
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    out = c0[None, None, :] + (c1 - c0)[None, None, :] * t[:, :, None]
    shade = np.zeros((n, n), dtype=np.float64)
    if texture in ("noise", "both"):
        shade += _bilinear_upsample(grid, n) + (2.0 * rng.random((n, n)) - 1.0) * 2.0
    if texture in ("stripes", "both"):
        phase = (sx * x + sy * y) / period
        shade += (4.0 * np.abs(phase - np.floor(phase) - 0.5) - 1.0) * stripe_amp
    out += shade[:, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def paint(background: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[str]) -> np.ndarray:
    """Copy of ``background`` with each mask filled by its solid colour."""
    image = background.copy()
    for mask, color in zip(masks, colors):
        image[mask] = COLORS[color]
    return image
