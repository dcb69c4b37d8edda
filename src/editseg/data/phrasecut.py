"""VGPhraseCut (Wu et al., 2020) in its released layout: RLFseg's training set.

Expected files (the dataset's ``data/VGPhraseCut_v0`` folder)::

    <root>/refer_train.json   refer_val.json   refer_test.json   (refer_miniv.json)
    <root>/images/<image_id>.jpg

Each task of ``refer_<split>.json`` has ``task_id``, ``image_id``, ``phrase`` and ``Polygons``:
one entry per instance, each a list of polygons, each a list of ``[x, y]`` points. The mask of a
phrase is the union of all its instances' polygons, filled at the image's resolution.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .base import DatasetFilesNotFound, ReferringDataset, ReferringSample

__all__ = ["PHRASECUT_SPLITS", "PhraseCutDataset", "rasterize_polygons"]

PHRASECUT_SPLITS = ("train", "val", "test", "miniv")
_HOME = "https://github.com/ChenyunWu/PhraseCutDataset"


def rasterize_polygons(instances: Any, height: int, width: int) -> np.ndarray:
    """Bool (H, W) union of ``instances`` (list of instances → polygons → ``[x, y]`` points)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygons in instances or []:
        for polygon in polygons:
            points = [(float(x), float(y)) for x, y in polygon]
            if len(points) >= 3:
                draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _load_mask(image_path: Path, instances: Any) -> np.ndarray:
    with Image.open(image_path) as image:
        width, height = image.size
    return rasterize_polygons(instances, height, width)


class PhraseCutDataset(ReferringDataset):
    """PhraseCut samples of one split (``train``, ``val``, ``test``, ``miniv``); nothing is read until used."""

    def __init__(self, root: str | Path, split: str = "train", image_root: str | Path | None = None) -> None:
        super().__init__()
        if split not in PHRASECUT_SPLITS:
            raise ValueError(f"unknown PhraseCut split {split!r}; choose one of {list(PHRASECUT_SPLITS)}")
        self.name, self.split = "phrasecut", split
        self.root = Path(root)
        self.image_root = Path(image_root) if image_root else self.root / "images"

    @property
    def refer_path(self) -> Path:
        return self.root / f"refer_{self.split}.json"

    def _load_samples(self) -> list[ReferringSample]:
        if not self.refer_path.is_file():
            raise DatasetFilesNotFound(
                f"PhraseCut annotations not found: {self.refer_path}. Download the dataset as described at "
                f"{_HOME} (its data/VGPhraseCut_v0 folder, with refer_{self.split}.json and images/) and pass that folder."
            )
        tasks = json.loads(self.refer_path.read_text())
        samples = []
        for task in tasks:
            image_path = self.image_root / f"{task['image_id']}.jpg"
            samples.append(ReferringSample(
                sample_id=f"phrasecut-{task['task_id']}",
                image_id=str(task["image_id"]),
                image_path=image_path,
                expression=task["phrase"],
                mask_loader=functools.partial(_load_mask, image_path, task.get("Polygons", [])),
                metadata={"dataset": "phrasecut", "split": self.split, "task_id": task["task_id"]},
            ))
        return samples

    def check_files(self, limit: int | None = 100) -> None:
        """Raise :class:`DatasetFilesNotFound` for the first missing image among the first ``limit`` samples."""
        for sample in self.samples[:limit]:
            if not Path(sample.image_path).is_file():
                raise DatasetFilesNotFound(
                    f"PhraseCut image missing: {sample.image_path}. Download the Visual Genome images of PhraseCut "
                    f"into {self.image_root} ({_HOME})."
                )
