"""Builders for tiny refer-format datasets (refs pickle + instances.json + images), written in-process.

Ground-truth masks are built independently of pycocotools: axis-aligned rectangles with integer
corners, whose COCO rasterisation is exactly ``mask[y0:y1, x0:x1]``, plus RLE masks given directly.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# (image_id, width, height, file_name or None for "not in instances.json")
IMAGES = [
    (1, 40, 30, "COCO_train2014_000000000001.jpg"),
    (2, 24, 20, "COCO_train2014_000000000002.jpg"),
    (3, 32, 16, None),  # no file_name: the loader must fall back to COCO_train2014_%012d.jpg
]


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """COCO polygon of the rectangle covering pixels ``[y0:y1, x0:x1]``."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_mask(height: int, width: int, *rects: tuple[int, int, int, int]) -> np.ndarray:
    """Union of rectangles ``(x0, y0, x1, y1)`` as a bool mask, rasterised with plain slicing."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def checker_mask(height: int, width: int) -> np.ndarray:
    """A mask with many runs, to exercise RLE encoding."""
    yy, xx = np.mgrid[:height, :width]
    return ((yy // 3 + xx // 4) % 2 == 0) & (xx > 2)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@dataclass
class ReferFixture:
    data_root: Path
    image_root: Path
    masks: dict[int, np.ndarray]  # ann_id -> expected mask
    refs: list[dict]
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # image_id -> (H, W)

    def sentences(self, split: str) -> list[str]:
        return [s["sent"] for ref in self.refs if ref["split"] == split for s in ref["sentences"]]


def _annotations() -> tuple[list[dict], dict[int, np.ndarray]]:
    """Annotations of every kind the loader must handle, with their expected masks."""
    anns, masks = [], {}
    # Two overlapping rectangle parts of one object: the union must keep the overlap.
    parts = [(2, 3, 12, 10), (8, 6, 20, 15)]
    anns.append({"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0,
                 "segmentation": [rect_polygon(*p) for p in parts]})  # fmt: skip
    masks[101] = rect_mask(30, 40, *parts)
    # Compressed RLE.
    masks[102] = checker_mask(30, 40)
    anns.append({"id": 102, "image_id": 1, "category_id": 2, "iscrowd": 1,
                 "segmentation": compressed_rle(masks[102])})  # fmt: skip
    # Uncompressed RLE (crowd style).
    masks[201] = rect_mask(20, 24, (5, 2, 9, 17))
    anns.append({"id": 201, "image_id": 2, "category_id": 1, "iscrowd": 1,
                 "segmentation": uncompressed_rle(masks[201])})  # fmt: skip
    # Three disjoint parts, one of them fully inside another (still a union).
    parts = [(0, 0, 4, 4), (1, 1, 3, 3), (20, 5, 32, 16)]
    anns.append({"id": 301, "image_id": 3, "category_id": 3, "iscrowd": 0,
                 "segmentation": [rect_polygon(*p) for p in parts]})  # fmt: skip
    masks[301] = rect_mask(16, 32, *parts)
    return anns, masks


def _ref(ref_id: int, ann_id: int, image_id: int, split: str, sents: list[str]) -> dict:
    sentences = [
        {"sent_id": ref_id * 10 + i, "sent": s, "raw": s.upper(), "tokens": s.split()} for i, s in enumerate(sents)
    ]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
        "category_id": 1,
        # refer's own file_name carries a ref suffix and is not the image file: must be ignored.
        "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg",
    }


def default_refs(split_names: tuple[str, ...]) -> list[dict]:
    """Refs spread over the given split names (first is the "main" evaluation split)."""
    main, other = split_names[0], split_names[1]
    return [
        _ref(1, 101, 1, main, ["the man on the left", "left guy"]),
        _ref(2, 102, 1, main, ["checkered thing"]),
        _ref(3, 201, 2, other, ["tall bar", "the bar", "bar in the middle"]),
        _ref(4, 301, 3, main, ["two boxes"]),
        _ref(5, 201, 2, main, ["bar again"]),
    ]


def build_refer_fixture(
    root: Path,
    dataset: str = "refcoco",
    split_by: str = "unc",
    refs: list[dict] | None = None,
    write_images: bool = True,
) -> ReferFixture:
    """Write ``<root>/<dataset>/refs(<split_by>).p``, ``instances.json`` and the images."""
    data_root = root
    folder = data_root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    image_root = data_root / "images" / "mscoco" / "images" / "train2014"
    image_root.mkdir(parents=True, exist_ok=True)

    anns, masks = _annotations()
    images, sizes = [], {}
    rng = np.random.default_rng(0)
    for image_id, width, height, file_name in IMAGES:
        entry = {"id": image_id, "width": width, "height": height}
        if file_name is not None:
            entry["file_name"] = file_name
        images.append(entry)
        sizes[image_id] = (height, width)
        if write_images:
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            name = file_name or f"COCO_train2014_{image_id:012d}.jpg"
            Image.fromarray(pixels).save(image_root / name, format="JPEG")
    instances = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": f"cat{i}"} for i in (1, 2, 3)],
    }
    (folder / "instances.json").write_text(json.dumps(instances))

    if refs is None:
        refs = default_refs(("val", "testA") if dataset != "refcocog" else ("val", "test"))
    with (folder / f"refs({split_by}).p").open("wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return ReferFixture(data_root=data_root, image_root=image_root, masks=masks, refs=refs, sizes=sizes)
