"""A plain manifest format for your own images, expressions and (optional) ground-truth masks.

JSONL (``.jsonl`` / ``.ndjson``), one object per line::

    {"image": "imgs/cat.jpg", "expression": "the cat on the left", "mask": "masks/cat.png", "id": "cat-1"}
    {"image": "/abs/dog.jpg", "expression": "dog", "rle": {"size": [480, 640], "counts": "..."}}

CSV (``.csv``) with a header row and the same columns: ``image,expression,mask,rle,id`` (``rle`` holds
the RLE dict as a JSON string; empty cells count as absent).

* ``image`` (required): path, relative to the manifest's folder or absolute.
* ``expression`` (required): the referring expression.
* ``mask`` or ``rle`` (optional, not both): a PNG whose nonzero pixels are foreground, or a COCO RLE
  dict (compressed or uncompressed ``counts``). Without either, the sample has no ground truth.
* ``id`` (optional): unique sample id; defaults to ``line<N>`` (N = 1-based line number).

Other keys/columns are kept in ``sample.metadata``. Malformed lines raise :class:`ManifestError` with
the line number; missing image/mask files are only reported when loaded (or by ``check_files``).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .base import DatasetFilesNotFound, ReferringDataset, ReferringSample
from .refer import decode_segmentation

__all__ = ["MANIFEST_COLUMNS", "ManifestDataset", "ManifestError", "load_manifest", "write_manifest"]

#: Columns with a meaning; anything else goes to ``sample.metadata``.
MANIFEST_COLUMNS = ("image", "expression", "mask", "rle", "id")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


class ManifestError(ValueError):
    """A manifest line is malformed."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


def _manifest_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"unknown manifest format {path.name!r}: use a .jsonl, .ndjson or .csv file")


def _read_png_mask(path: Path, describe: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetFilesNotFound(f"mask of {describe} not found: {path}")
    with Image.open(path) as image:
        array = np.asarray(image)  # palette images keep their indices: index 0 is background
    return array.any(axis=2) if array.ndim == 3 else array != 0


def _decode_rle(rle: dict[str, Any]) -> np.ndarray:
    height, width = (int(v) for v in rle["size"])
    return decode_segmentation(rle, height, width)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(path, number, f"invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise ManifestError(path, number, f"expected a JSON object, got {type(record).__name__}")
            yield number, record


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "image" not in columns or "expression" not in columns:
            raise ManifestError(
                path, 1, f"CSV header must name at least the columns 'image' and 'expression'; got {columns}"
            )
        for row in reader:
            line = reader.line_num  # last physical line of the row (rows can span quoted newlines)
            if None in row:
                raise ManifestError(path, line, f"more fields than the {len(columns)} header columns")
            record: dict[str, Any] = {key: value for key, value in row.items() if value not in (None, "")}
            if "rle" in record:
                try:
                    record["rle"] = json.loads(record["rle"])
                except json.JSONDecodeError as err:
                    raise ManifestError(path, line, f"'rle' is not valid JSON ({err.msg})") from None
            yield line, record


def _check_rle(rle: Any) -> str | None:
    """Problem with an RLE dict, or None if it looks valid."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "'rle' must be an object with 'size' [height, width] and 'counts'"
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)):
        return f"'rle.size' must be [height, width] non-negative integers, got {size!r}"
    counts = rle["counts"]
    if isinstance(counts, str):
        return None
    if isinstance(counts, list) and all(isinstance(v, int) and v >= 0 for v in counts):
        if sum(counts) != size[0] * size[1]:
            return f"uncompressed 'rle.counts' sum to {sum(counts)}, not height*width = {size[0] * size[1]}"
        return None
    return "'rle.counts' must be a string (compressed) or a list of non-negative integers"


class ManifestDataset(ReferringDataset):
    """Samples read from a JSONL or CSV manifest (see the module docstring for the format).

    The manifest is parsed when the dataset is created, so malformed lines fail early; images and
    masks are read only on demand.
    """

    def __init__(self, path: str | Path, *, name: str | None = None, split: str = "") -> None:
        super().__init__()
        self.path = Path(path)
        self.format = _manifest_format(self.path)
        if not self.path.is_file():
            raise DatasetFilesNotFound(f"manifest not found: {self.path}")
        self.name = name or self.path.stem
        self.split = split
        self._samples = self._parse()

    def _load_samples(self) -> list[ReferringSample]:
        return self._parse()

    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    def _parse(self) -> list[ReferringSample]:
        records = _iter_jsonl(self.path) if self.format == "jsonl" else _iter_csv(self.path)
        samples: list[ReferringSample] = []
        seen: dict[str, int] = {}
        for line, record in records:
            sample = self._to_sample(line, record)
            if sample.sample_id in seen:
                raise ManifestError(
                    self.path, line, f"duplicate id {sample.sample_id!r} (first used on line {seen[sample.sample_id]})"
                )
            seen[sample.sample_id] = line
            samples.append(sample)
        return samples

    def _to_sample(self, line: int, record: dict[str, Any]) -> ReferringSample:
        def fail(message: str) -> ManifestError:
            return ManifestError(self.path, line, message)

        for key in ("image", "expression"):
            value = record.get(key)
            if not isinstance(value, str) or not value.strip():
                raise fail(f"missing or empty '{key}' (a non-empty string is required)")
        if "mask" in record and "rle" in record:
            raise fail("give either 'mask' or 'rle', not both")
        sample_id = record.get("id", f"line{line}")
        if isinstance(sample_id, bool) or not isinstance(sample_id, (str, int)) or str(sample_id) == "":
            raise fail(f"'id' must be a non-empty string or an integer, got {sample_id!r}")
        sample_id = str(sample_id)

        origin = f"{self.path.name}:{line}"
        describe = f"sample {sample_id!r} ({origin})"
        loader = None
        if "mask" in record:
            if not isinstance(record["mask"], str) or not record["mask"].strip():
                raise fail("'mask' must be a path string")
            loader = functools.partial(_read_png_mask, self._resolve(record["mask"]), describe)
        elif "rle" in record:
            problem = _check_rle(record["rle"])
            if problem:
                raise fail(problem)
            loader = functools.partial(_decode_rle, record["rle"])

        image_path = self._resolve(record["image"])
        metadata = {key: value for key, value in record.items() if key not in MANIFEST_COLUMNS}
        metadata["origin"] = origin
        return ReferringSample(
            sample_id=sample_id,
            image_id=os.path.normpath(image_path),
            image_path=image_path,
            expression=record["expression"],
            mask_loader=loader,
            metadata=metadata,
        )

    def check_files(self) -> None:
        """Raise :class:`DatasetFilesNotFound` listing every missing image or mask file."""
        missing = []
        for sample in self.samples:
            if sample.image_path is not None and not sample.image_path.is_file():
                missing.append(f"image {sample.image_path} ({sample.metadata['origin']})")
            mask_loader = sample.mask_loader
            if isinstance(mask_loader, functools.partial) and mask_loader.func is _read_png_mask:
                mask_path = mask_loader.args[0]
                if not mask_path.is_file():
                    missing.append(f"mask {mask_path} ({sample.metadata['origin']})")
        if missing:
            shown = "\n  ".join(missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DatasetFilesNotFound(f"{len(missing)} files named in {self.path} are missing:\n  {shown}{more}")


def load_manifest(path: str | Path, *, name: str | None = None, split: str = "") -> ManifestDataset:
    """Read a JSONL or CSV manifest (format chosen by the file extension)."""
    return ManifestDataset(path, name=name, split=split)


def _encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _path_for_manifest(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies inside it, otherwise absolute (POSIX style)."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path(os.path.abspath(folder))).as_posix()
    except ValueError:
        return absolute.as_posix()


def write_manifest(samples: Iterable[ReferringSample], path: str | Path, *, masks: str = "rle") -> Path:
    """Write samples to a JSONL or CSV manifest that :func:`load_manifest` reads back.

    Args:
        samples: Samples with an ``image_path``.
        path: Output file; ``.jsonl``/``.ndjson`` or ``.csv``.
        masks: ``"rle"`` stores ground truth inline as compressed COCO RLE, ``"png"`` writes one PNG
            per sample to ``<manifest stem>_masks/`` next to the manifest, ``"none"`` leaves masks out.
            Samples without ground truth get no mask either way.

    Image paths inside the manifest's folder are written relative to it, others absolute. JSONL
    also keeps JSON-scalar metadata (except ``origin``); CSV writes only the standard columns.
    """
    if masks not in ("rle", "png", "none"):
        raise ValueError(f"masks must be 'rle', 'png' or 'none', got {masks!r}")
    path = Path(path)
    fmt = _manifest_format(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    mask_dir = folder / f"{path.stem}_masks"
    used_names: set[str] = set()

    rows: list[dict[str, Any]] = []
    for index, sample in enumerate(samples):
        if sample.image_path is None:
            raise ValueError(f"{sample.describe()} has no image path; a manifest needs one")
        row: dict[str, Any] = {
            "image": _path_for_manifest(sample.image_path, folder),
            "expression": sample.expression,
            "id": sample.sample_id,
        }
        if masks != "none" and sample.has_mask:
            mask = sample.load_mask()
            if masks == "rle":
                row["rle"] = _encode_rle(mask)
            else:
                stem = re.sub(r"[^A-Za-z0-9._+-]", "_", sample.sample_id) or "mask"
                name = f"{stem}.png" if f"{stem}.png" not in used_names else f"{stem}_{index}.png"
                used_names.add(name)
                mask_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / name)
                row["mask"] = _path_for_manifest(mask_dir / name, folder)
        if fmt == "jsonl":
            for key, value in sample.metadata.items():
                if key not in MANIFEST_COLUMNS and key != "origin" and isinstance(value, (str, int, float, bool)):
                    row[key] = value
        rows.append(row)

    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "expression", "mask", "rle", "id"])
            writer.writeheader()
            for row in rows:
                if "rle" in row:
                    row["rle"] = json.dumps(row["rle"])
                writer.writerow(row)
    return path
