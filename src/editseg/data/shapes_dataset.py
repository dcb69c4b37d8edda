"""ShapesWorld samples as a :class:`~editseg.data.base.ReferringDataset`, for ``editseg eval --dataset shapes``.

The generated scenes live in memory, so the adapted samples carry in-memory image and mask loaders
instead of file paths. Every scene is its own image (``image_id == sample_id``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .base import ReferringDataset, ReferringSample
from .shapes import BENCHMARK_SEED, ShapesSample, shapes_benchmark

__all__ = ["InMemorySample", "ShapesDataset", "shapes_benchmark_dataset", "to_referring_sample"]


def _array_image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _array_mask(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=bool)


@dataclass(frozen=True)
class InMemorySample(ReferringSample):
    """A :class:`ReferringSample` whose image comes from ``image_loader`` rather than a file."""

    image_loader: Callable[[], Image.Image] | None = field(default=None, repr=False, compare=False)

    def load_image(self) -> Image.Image:
        """The image from ``image_loader`` (or from ``image_path`` when there is no loader)."""
        if self.image_loader is None:
            return super().load_image()
        return self.image_loader().convert("RGB")


def to_referring_sample(sample: ShapesSample) -> InMemorySample:
    """Wrap one generated scene; its metadata (kind, objects, instruction, ...) is kept."""
    metadata = sample.metadata()
    metadata["dataset"] = "shapes"
    return InMemorySample(
        sample_id=sample.id,
        image_id=sample.id,
        image_path=None,
        expression=sample.expression,
        mask_loader=functools.partial(_array_mask, sample.mask),
        metadata=metadata,
        image_loader=functools.partial(_array_image, sample.image),
    )


class ShapesDataset(ReferringDataset):
    """A dataset over :class:`ShapesSample` objects (in the given order)."""

    def __init__(self, samples: Iterable[ShapesSample], name: str = "shapes", split: str = "test") -> None:
        super().__init__()
        self.name = name
        self.split = split
        self._samples = [to_referring_sample(sample) for sample in samples]

    def _load_samples(self) -> list[ReferringSample]:
        return list(self._samples or [])

    @property
    def benchmark(self) -> tuple[str, str]:
        """``(dataset, split)`` column key of result tables."""
        return self.name, self.split


def shapes_benchmark_dataset(
    n: int = 1000, image_size: int = 64, tier: str = "full", world_seed: int = BENCHMARK_SEED
) -> ShapesDataset:
    """The first ``n`` samples of a benchmark tier from world ``world_seed`` (:func:`shapes_benchmark`);
    the split label is the tier ("basic" or "full")."""
    samples = shapes_benchmark(n, image_size=image_size, tier=tier, world_seed=world_seed)
    return ShapesDataset(samples, name="shapes", split=tier)
