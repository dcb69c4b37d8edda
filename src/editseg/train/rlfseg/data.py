"""Training/validation sources for RLFseg: (image, expression, mask) examples.

- ``phrasecut``: ``data_root`` = the PhraseCut ``VGPhraseCut_v0`` folder (the paper's training set).
- ``refcoco`` / ``refcoco+`` / ``refcocog``: ``data_root`` = the refer ``data`` folder (see
  ``editseg.data.refer``), UNC splits for RefCOCO/+, UMD for RefCOCOg.
- ``manifest``: ``data_root`` = a JSONL/CSV manifest of your own data (``editseg.data.manifest``);
  every line needs a ``mask`` or ``rle``. Validation reads ``val_manifest`` (else the first
  ``val_size`` training lines).
- ``shapes``: the synthetic shapes world (``editseg.data.shapes``), generated on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ...data.base import DatasetFilesNotFound, ReferringDataset
from ...methods.rlfseg_models import image_to_pixels, mask_to_pixels
from .config import RLFsegTrainConfig
from .rds import RefinedLabels

SOURCES = ("phrasecut", "refcoco", "refcoco+", "refcocog", "manifest", "shapes")


@dataclass
class Example:
    sample_id: str
    image: Image.Image
    expression: str
    mask: np.ndarray  # bool (H, W) at the image's resolution


class Source:
    """Indexable examples."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Example:
        raise NotImplementedError


class ShapesSource(Source):
    def __init__(self, split: str, size: int, world_seed: int = 0, image_size: int = 64):
        from ...data.shapes import ShapesWorld

        self.world, self.split, self.size = ShapesWorld(image_size=image_size, seed=world_seed), split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        s = self.world.sample(self.split, index)
        return Example(s.id, Image.fromarray(np.asarray(s.image)), s.expression, np.asarray(s.mask, dtype=bool))


class ReferringSource(Source):
    """Any :class:`~editseg.data.base.ReferringDataset` with ground-truth masks."""

    def __init__(self, dataset: ReferringDataset | Sequence, limit: int | None = None):
        self.samples = list(dataset)[:limit] if limit else list(dataset)
        if not self.samples:
            raise DatasetFilesNotFound(f"{dataset!r} holds no samples.")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Example:
        sample = self.samples[index]
        if not sample.has_mask:
            raise ValueError(f"{sample.describe()} has no ground-truth mask: training needs one (a 'mask' or 'rle').")
        return Example(sample.sample_id, sample.load_image(), sample.expression, sample.load_mask())


def _require_root(config: RLFsegTrainConfig) -> str:
    if not config.data_root:
        raise DatasetFilesNotFound(f"--data-root is required for the {config.source!r} source "
                                   "(dataset folder, or the manifest file for 'manifest').")
    return config.data_root


def build_source(config: RLFsegTrainConfig, validation: bool = False, image_size: int = 64) -> Source:
    """The training (or validation) source named by ``config.source``."""
    split = config.val_split if validation else config.split
    limit = config.val_size if validation else config.train_size
    if config.source == "shapes":
        return ShapesSource("val" if validation else "train", limit or (config.val_size if validation else 20_000),
                            config.world_seed, image_size)
    if config.source == "phrasecut":
        from ...data.phrasecut import PhraseCutDataset

        return ReferringSource(PhraseCutDataset(_require_root(config), split), limit)
    if config.source in ("refcoco", "refcoco+", "refcocog"):
        from ...data.refer import RefCOCODataset

        return ReferringSource(RefCOCODataset(_require_root(config), config.source, split), limit)
    if config.source == "manifest":
        from ...data.manifest import load_manifest

        path = config.val_manifest if validation and config.val_manifest else _require_root(config)
        return ReferringSource(load_manifest(path), limit)
    raise ValueError(f"unknown source {config.source!r}; choose one of {', '.join(SOURCES)}")


class FlowDataset(torch.utils.data.Dataset):
    """Examples as tensors at the training resolution: image and mask (and refined mask) pixels."""

    def __init__(self, source: Source, resolution: int, refined: RefinedLabels | None = None):
        self.source, self.resolution, self.refined = source, resolution, refined

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        example = self.source[index]
        item = {
            "index": index,
            "expression": example.expression,
            "pixels": image_to_pixels(example.image, self.resolution),
            "mask_pixels": mask_to_pixels(example.mask, self.resolution),
            "mask": torch.from_numpy(_resize_mask(example.mask, self.resolution)),
        }
        if self.refined is not None:
            refined = self.refined.get(example.sample_id, example.image, example.mask)
            item["refined_pixels"] = mask_to_pixels(refined, self.resolution)
        return item


def _resize_mask(mask: np.ndarray, resolution: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.NEAREST)) > 127
