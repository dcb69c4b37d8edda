"""RefCOCO, RefCOCO+ and RefCOCOg in the standard ``refer`` layout.

Expected files (the layout of the ``lichengunc/refer`` project, also used by LAVT, CRIS, ...)::

    <data_root>/<dataset>/refs(<split_by>).p     # pickled list of refs
    <data_root>/<dataset>/instances.json         # COCO-format images / annotations / categories
    <image_root>/COCO_train2014_000000xxxxxx.jpg # default <data_root>/images/mscoco/images/train2014

Every sentence of every ref in the chosen split is one sample; its ground truth is the union of
all parts (polygons or RLE) of the ref's COCO annotation, at the original image resolution.

The refs file is a pickle. It is read with :class:`DataOnlyUnpickler`, which admits only builtin
containers and scalars (dict, list, tuple, str, bytes, int, float, bool, None, set): a crafted
file that names any class or function (the way pickles run code) is refused with
:class:`~editseg.errors.UnsafeFileError` before anything is called.
"""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import UnsafeFileError
from .base import DatasetFilesNotFound, ReferringDataset, ReferringSample

__all__ = ["DEFAULT_SPLIT_BY", "SPLITS", "DataOnlyUnpickler", "RefCOCODataset", "decode_segmentation", "load_data_pickle"]

#: Default ``split_by`` (who made the train/val/test split) of each dataset.
DEFAULT_SPLIT_BY: dict[str, str] = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}

#: Valid splits of each supported (dataset, split_by) pair.
SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}

_REFER_HOME = "https://github.com/lichengunc/refer"
_REFER_ZIP = "http://bvisionweb1.cs.unc.edu/licheng/referit/data/{dataset}.zip"
_COCO_HOME = "https://cocodataset.org/#download"
_COCO_TRAIN2014 = "http://images.cocodataset.org/zips/train2014.zip"


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation into a bool mask of shape (height, width).

    ``segmentation`` is a list of polygons (each a flat ``[x0, y0, x1, y1, ...]`` list) or an RLE
    dict with compressed (str/bytes) or uncompressed (list of ints) ``counts``. Polygons are
    rasterised one by one and OR-ed together, so overlapping parts never cancel out.
    """
    if isinstance(segmentation, dict):
        return _decode_rle(segmentation, height, width)
    if not isinstance(segmentation, (list, tuple)):
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    mask = np.zeros((height, width), dtype=bool)
    polygons = []
    for polygon in segmentation:
        coords = [float(v) for v in polygon]
        if len(coords) < 4 or len(coords) % 2:
            continue  # fewer than two points: no area
        if len(coords) == 4:
            # pycocotools reads a 4-number entry as a box; repeat a vertex to keep it a polygon.
            coords += coords[2:]
        polygons.append(coords)
    if polygons:
        rles = mask_utils.frPyObjects(polygons, height, width)
        decoded = mask_utils.decode(rles)  # (H, W, N) uint8, one channel per polygon
        mask |= decoded.any(axis=2)
    return mask


def _decode_rle(rle: dict[str, Any], height: int, width: int) -> np.ndarray:
    size = [int(v) for v in rle.get("size", (height, width))]
    if size != [height, width]:
        raise ValueError(f"RLE size {size} does not match the image size {[height, width]}")
    counts = rle.get("counts")
    if isinstance(counts, list):
        encoded = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
    elif isinstance(counts, (str, bytes)):
        encoded = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError("RLE 'counts' must be a string (compressed) or a list of ints (uncompressed)")
    return mask_utils.decode(encoded).astype(bool)


class _CocoSample(ReferringSample):
    """A sample whose missing-image error says where to get the COCO images."""

    def load_image(self) -> Image.Image:
        try:
            return super().load_image()
        except DatasetFilesNotFound as err:
            raise DatasetFilesNotFound(
                f"{err}\nDownload the COCO train2014 images from {_COCO_HOME} ({_COCO_TRAIN2014}) "
                f"and unzip them into the dataset's image_root."
            ) from None


_SAFE_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler for plain data: any global other than ``set``/``frozenset`` is refused.

    Pickles run code only through globals (a class or function named in the stream, then called
    by REDUCE/BUILD/INST/OBJ/NEWOBJ); refusing every global at lookup means nothing is ever called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return set if name == "set" else frozenset
        raise pickle.UnpicklingError(f"refuses {module}.{name}")


def load_data_pickle(path: str | Path) -> Any:
    """Read a pickle of builtin containers and scalars (see :class:`DataOnlyUnpickler`)."""
    path = Path(path)
    for encoding in ("ASCII", "latin1"):  # latin1: Python 2 pickles with non-ASCII byte strings
        with path.open("rb") as handle:
            try:
                return DataOnlyUnpickler(handle, encoding=encoding).load()
            except UnicodeDecodeError:
                continue
            except pickle.UnpicklingError as error:
                if "refuses" in str(error):
                    raise UnsafeFileError(
                        f"{path} is not a plain-data pickle: it names {str(error).split('refuses ', 1)[1]}, which "
                        "editseg will not load (a pickle that names code can run it). Use the refs file from "
                        "the refer project (lichengunc/refer), or rebuild it from plain lists and dicts."
                    ) from None
                raise UnsafeFileError(f"{path} is not a readable pickle ({error}).") from None
            except (EOFError, ValueError, IndexError, TypeError, AttributeError) as error:
                raise UnsafeFileError(f"{path} is not a readable pickle (truncated or corrupt: {error}).") from None
    raise UnsafeFileError(f"{path}: its strings are in no encoding editseg can read.")


def _load_pickle(path: Path) -> Any:
    return load_data_pickle(path)


class RefCOCODataset(ReferringDataset):
    """RefCOCO / RefCOCO+ / RefCOCOg samples of one split.

    Args:
        data_root: Folder holding ``refcoco/``, ``refcoco+/``, ``refcocog/`` (the refer ``data`` dir).
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"`` (case-insensitive).
        split: ``val``/``testA``/``testB``/``train`` (RefCOCO, RefCOCO+), ``val``/``test``/``train``
            (RefCOCOg umd) or ``val``/``train`` (RefCOCOg google).
        split_by: Split provider; defaults to ``unc`` (RefCOCO, RefCOCO+) and ``umd`` (RefCOCOg).
        image_root: Folder with the COCO train2014 images; defaults to
            ``<data_root>/images/mscoco/images/train2014``.

    Nothing is read from disk until the samples are first needed; the parsed annotations are then
    cached on the instance. Masks and images are only read per sample, on demand.
    """

    def __init__(
        self,
        data_root: str | Path,
        dataset: str = "refcoco",
        split: str = "val",
        *,
        split_by: str | None = None,
        image_root: str | Path | None = None,
    ) -> None:
        super().__init__()
        name = dataset.strip().lower()
        if name not in DEFAULT_SPLIT_BY:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULT_SPLIT_BY)}")
        split_by = (split_by or DEFAULT_SPLIT_BY[name]).strip().lower()
        if (name, split_by) not in SPLITS:
            known = sorted(by for (ds, by) in SPLITS if ds == name)
            raise ValueError(f"unsupported split_by {split_by!r} for {name}; choose one of {known}")
        valid = SPLITS[(name, split_by)]
        if split not in valid:
            raise ValueError(f"unknown split {split!r} for {name} ({split_by}); choose one of {list(valid)}")
        self.name = name
        self.split = split
        self.split_by = split_by
        self.data_root = Path(data_root)
        default_images = self.data_root / "images" / "mscoco" / "images" / "train2014"
        self.image_root = Path(image_root) if image_root is not None else default_images

    @property
    def benchmark(self) -> tuple[str, str]:
        """``(dataset, split)`` key used by :mod:`editseg.evaluation.published`.

        The dataset part is the dataset name for the default ``split_by`` and
        ``"<name>-<split_by>"`` otherwise, e.g. ``("refcocog-google", "val")``.
        """
        key = self.name if self.split_by == DEFAULT_SPLIT_BY[self.name] else f"{self.name}-{self.split_by}"
        return key, self.split

    @property
    def refs_path(self) -> Path:
        """Path of the pickled refs file, ``<data_root>/<dataset>/refs(<split_by>).p``."""
        return self.data_root / self.name / f"refs({self.split_by}).p"

    @property
    def instances_path(self) -> Path:
        """Path of the COCO-format ``instances.json``."""
        return self.data_root / self.name / "instances.json"

    def _missing_annotations_error(self, path: Path) -> DatasetFilesNotFound:
        return DatasetFilesNotFound(
            f"{self.name} ({self.split_by}) annotation file not found: expected {path}.\n"
            f"Get the refer annotations from the data links of the lichengunc/refer project "
            f"({_REFER_HOME}; e.g. {_REFER_ZIP.format(dataset=self.name)}) and unzip them into "
            f"{self.data_root}, so that {self.refs_path} and {self.instances_path} exist."
        )

    def _load_samples(self) -> list[ReferringSample]:
        for path in (self.refs_path, self.instances_path):
            if not path.is_file():
                raise self._missing_annotations_error(path)
        refs = [ref for ref in _load_pickle(self.refs_path) if ref.get("split") == self.split]
        with self.instances_path.open("r", encoding="utf-8") as handle:
            instances = json.load(handle)
        images = {int(image["id"]): image for image in instances.get("images", [])}
        annotations = {int(ann["id"]): ann for ann in instances.get("annotations", [])}

        samples = []
        for ref in refs:
            image_id, ann_id = int(ref["image_id"]), int(ref["ann_id"])
            image = images.get(image_id)
            ann = annotations.get(ann_id)
            if image is None or ann is None:
                missing = f"image {image_id}" if image is None else f"annotation {ann_id}"
                raise ValueError(
                    f"ref {ref.get('ref_id')} points to {missing}, which is not in {self.instances_path}"
                )
            height, width = int(image["height"]), int(image["width"])
            file_name = image.get("file_name") or f"COCO_train2014_{image_id:012d}.jpg"
            loader = functools.partial(decode_segmentation, ann["segmentation"], height, width)
            for sentence in ref["sentences"]:
                sent_id = int(sentence["sent_id"])
                samples.append(
                    _CocoSample(
                        sample_id=f"{self.name}_{self.split_by}_{self.split}_{ref['ref_id']}_{sent_id}",
                        image_id=str(image_id),
                        image_path=self.image_root / file_name,
                        expression=str(sentence["sent"]),
                        mask_loader=loader,
                        metadata={
                            "dataset": self.name,
                            "split_by": self.split_by,
                            "split": self.split,
                            "ref_id": int(ref["ref_id"]),
                            "ann_id": ann_id,
                            "sent_id": sent_id,
                            "category_id": ref.get("category_id", ann.get("category_id")),
                            "height": height,
                            "width": width,
                        },
                    )
                )
        return samples

    def check_files(self, images: bool = True) -> None:
        """Raise :class:`DatasetFilesNotFound` unless annotations (and, optionally, all images) exist."""
        samples = self.samples  # raises for missing annotation files
        if not images:
            return
        paths = {sample.image_path for sample in samples if sample.image_path is not None}
        missing = sorted(str(path) for path in paths if not path.is_file())
        if missing:
            shown = "\n  ".join(missing[:5])
            raise DatasetFilesNotFound(
                f"{len(missing)} of {len(paths)} images of {self.name} {self.split} are missing under "
                f"{self.image_root}, e.g.\n  {shown}\n"
                f"Download the COCO train2014 images from {_COCO_HOME} ({_COCO_TRAIN2014}) and unzip "
                f"them there, or pass image_root= the folder that holds them."
            )
