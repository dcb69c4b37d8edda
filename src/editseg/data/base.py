"""Core data types shared by every dataset: one referring sample, a dataset of them, and sharding.

A :class:`ReferringSample` is one (image, expression, ground-truth mask) triple. Images and masks
are loaded lazily, so a dataset of tens of thousands of samples costs little memory until used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "DatasetFilesNotFound",
    "ReferringSample",
    "ReferringDataset",
    "SampleList",
    "group_by_image",
    "parse_shard",
    "shard",
]


class DatasetFilesNotFound(FileNotFoundError):
    """A file a dataset needs is missing; the message says where it was expected and how to get it."""


@dataclass(frozen=True)
class ReferringSample:
    """One referring expression for one image.

    Attributes:
        sample_id: Unique, stable identifier (the built-in RefCOCO ids are also file-name safe).
        image_id: Identifier of the image; samples sharing it show the same picture.
        image_path: Where the RGB image lives, or ``None`` for samples without a file.
        expression: The referring expression, as annotated.
        mask_loader: Zero-argument callable returning the ground-truth mask (or ``None`` when the
            sample has no ground truth). Kept picklable (a ``functools.partial`` of a module-level
            function) by the built-in datasets.
        metadata: Free-form extras, e.g. ``ref_id``, ``ann_id``, ``sent_id``, ``split``, ``dataset``.
            An ``origin`` entry (e.g. ``"data.jsonl:12"``) names where the sample was defined and is
            quoted in error messages.
    """

    sample_id: str
    image_id: str
    image_path: Path | None
    expression: str
    mask_loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def has_mask(self) -> bool:
        """Whether a ground-truth mask is available."""
        return self.mask_loader is not None

    def describe(self) -> str:
        """Short human-readable reference to this sample for error messages."""
        origin = self.metadata.get("origin")
        return f"sample {self.sample_id!r}" + (f" ({origin})" if origin else "")

    def load_mask(self) -> np.ndarray:
        """Ground-truth mask as a bool array of shape (H, W) at the original image resolution."""
        if self.mask_loader is None:
            raise ValueError(f"{self.describe()} has no ground-truth mask")
        mask = np.asarray(self.mask_loader())
        if mask.ndim != 2:
            raise ValueError(f"ground-truth mask of {self.describe()} has shape {mask.shape}; expected (H, W)")
        return mask.astype(bool, copy=False)

    def load_image(self) -> Image.Image:
        """The image, converted to RGB."""
        if self.image_path is None:
            raise ValueError(f"{self.describe()} has no image path")
        path = Path(self.image_path)
        if not path.is_file():
            raise DatasetFilesNotFound(f"image of {self.describe()} not found: {path}")
        try:  # no EXIF rotation: annotations are in the stored pixel orientation
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt file
            from ..errors import ImageLoadError

            raise ImageLoadError(f"Cannot read the image of {self.describe()} ({path}): {error}") from None


class ReferringDataset(Sequence[ReferringSample]):
    """Base class for datasets of :class:`ReferringSample`.

    Subclasses implement :meth:`_load_samples`, which is called once, on first access; the result
    is cached. The sample order is deterministic and defines the "stable order" used by
    :func:`shard` and :meth:`group_by_image`.
    """

    name: str = "dataset"
    split: str = ""

    def __init__(self) -> None:
        self._samples: list[ReferringSample] | None = None

    def _load_samples(self) -> list[ReferringSample]:
        raise NotImplementedError

    @property
    def samples(self) -> list[ReferringSample]:
        """All samples, in stable order (loaded on first access)."""
        if self._samples is None:
            self._samples = list(self._load_samples())
        return self._samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[ReferringSample]:
        return iter(self.samples)

    def __getitem__(self, index):  # type: ignore[override]
        """A sample by integer position, or a list of samples for a slice."""
        if not isinstance(index, (int, slice)):
            raise TypeError(f"dataset indices must be integers or slices, not {type(index).__name__}")
        return self.samples[index]

    def group_by_image(self) -> Iterator[tuple[str, list[ReferringSample]]]:
        """Yield ``(image_id, samples)`` with all expressions of one image together."""
        return group_by_image(self.samples)

    def __repr__(self) -> str:
        size = "not loaded" if self._samples is None else f"{len(self._samples)} samples"
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, {size})"


class SampleList(ReferringDataset):
    """A dataset over an in-memory list of samples (e.g. one shard of another dataset)."""

    def __init__(self, samples: Iterable[ReferringSample], name: str = "samples", split: str = "") -> None:
        super().__init__()
        self.name = name
        self.split = split
        self._samples = list(samples)

    def _load_samples(self) -> list[ReferringSample]:
        return self._samples or []


def group_by_image(samples: Iterable[ReferringSample]) -> Iterator[tuple[str, list[ReferringSample]]]:
    """Group samples by ``image_id``.

    Groups come in order of each image's first appearance, and samples keep their order inside a
    group, so the result is deterministic for a deterministic input order.
    """
    groups: dict[str, list[ReferringSample]] = {}
    for sample in samples:
        groups.setdefault(sample.image_id, []).append(sample)
    yield from groups.items()


def parse_shard(spec: str) -> tuple[int, int]:
    """Parse a ``"i/n"`` shard spec into ``(i, n)``.

    The index is **0-based**: ``"0/4"`` … ``"3/4"`` are the four shards of a 4-way split.
    """
    text = str(spec).strip()
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError(f"invalid shard spec {spec!r}: expected 'i/n', e.g. '0/4' (0-based index)")
    try:
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(
            f"invalid shard spec {spec!r}: both i and n in 'i/n' must be integers, e.g. '0/4'"
        ) from None
    _check_shard(index, count)
    return index, count


def _check_shard(index: int, count: int) -> None:
    if count < 1:
        raise ValueError(f"invalid shard count {count}: need at least 1 shard")
    if not 0 <= index < count:
        raise ValueError(
            f"invalid shard index {index} for {count} shards: the index is 0-based, "
            f"use 0/{count} … {count - 1}/{count}"
        )


def shard(samples: Iterable[ReferringSample], index: int, count: int) -> list[ReferringSample]:
    """Shard ``index`` (0-based) of ``count`` roughly equal shards of ``samples``.

    Whole images are kept together (all expressions of an image land in one shard), every sample
    lands in exactly one shard, and shards are contiguous runs of the image groups in stable
    order. An image group goes to the shard that contains the midpoint of its sample range, which
    balances sample counts; with fewer images than shards some shards are empty.
    """
    _check_shard(index, count)
    groups = [group for _, group in group_by_image(samples)]
    total = sum(len(group) for group in groups)
    selected: list[ReferringSample] = []
    start = 0
    for group in groups:
        # Midpoint of [start, start + len) is start + len/2; scale by count/total, all in integers.
        owner = ((2 * start + len(group)) * count) // (2 * total)
        if owner == index:
            selected.extend(group)
        start += len(group)
    return selected
