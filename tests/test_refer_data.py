"""RefCOCO/+/g loading from tiny refer-format fixtures written in tmp_path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from fixtures_refer import (
    build_refer_fixture,
    checker_mask,
    compressed_rle,
    default_refs,
    rect_mask,
    rect_polygon,
    uncompressed_rle,
)
from PIL import Image, ImageDraw

from editseg.data.base import (
    DatasetFilesNotFound,
    ReferringDataset,
    ReferringSample,
    SampleList,
    group_by_image,
    parse_shard,
    shard,
)
from editseg.data.refer import SPLITS, RefCOCODataset, decode_segmentation


@pytest.fixture()
def refcoco(tmp_path):
    return build_refer_fixture(tmp_path / "data")


def test_samples_are_every_sentence_of_the_split(refcoco):
    ds = RefCOCODataset(refcoco.data_root, "refcoco", "val")
    assert isinstance(ds, ReferringDataset)
    assert len(ds) == len(refcoco.sentences("val")) == 5
    assert [s.expression for s in ds] == refcoco.sentences("val")
    test_a = RefCOCODataset(refcoco.data_root, "refcoco", "testA")
    assert [s.expression for s in test_a] == ["tall bar", "the bar", "bar in the middle"]
    assert len(RefCOCODataset(refcoco.data_root, "refcoco", "testB")) == 0


def test_sample_fields_and_ids(refcoco):
    ds = RefCOCODataset(refcoco.data_root, "refcoco", "val")
    ids = [s.sample_id for s in ds]
    assert len(set(ids)) == len(ids)
    first = ds[0]
    assert first.sample_id == "refcoco_unc_val_1_10"
    assert first.image_id == "1"
    assert first.metadata["ref_id"] == 1 and first.metadata["ann_id"] == 101 and first.metadata["sent_id"] == 10
    assert first.metadata["split"] == "val" and first.metadata["dataset"] == "refcoco"
    # The image comes from instances.json's file_name, not the ref's suffixed file_name.
    assert first.image_path == refcoco.image_root / "COCO_train2014_000000000001.jpg"
    image = first.load_image()
    assert image.mode == "RGB" and image.size == (40, 30)
    # Image 3 has no file_name in instances.json: fall back to the COCO naming scheme.
    third = next(s for s in ds if s.image_id == "3")
    assert third.image_path.name == "COCO_train2014_000000000003.jpg"
    assert third.load_image().size == (32, 16)


def test_masks_are_unions_at_original_resolution(refcoco):
    ds = RefCOCODataset(refcoco.data_root, "refcoco", "val")
    by_ann = {}
    for sample in ds:
        mask = sample.load_mask()
        assert mask.dtype == bool
        ann_id = sample.metadata["ann_id"]
        height, width = refcoco.sizes[int(sample.image_id)]
        assert mask.shape == (height, width)
        np.testing.assert_array_equal(mask, refcoco.masks[ann_id])
        by_ann[ann_id] = mask
    assert set(by_ann) == {101, 102, 201, 301}  # polygons, compressed RLE, uncompressed RLE
    # The overlap of the two rectangle parts of ann 101 is kept (no XOR).
    assert by_ann[101][6:10, 8:12].all()


def test_overlapping_polygons_are_ored():
    parts = [(1, 1, 9, 9), (4, 4, 12, 12), (4, 4, 6, 6)]
    mask = decode_segmentation([rect_polygon(*p) for p in parts], 14, 15)
    np.testing.assert_array_equal(mask, rect_mask(14, 15, *parts))


def test_free_form_polygon_matches_independent_rasterizer():
    polygon = [3.0, 2.0, 27.0, 6.0, 18.0, 22.0, 6.0, 17.0]
    mask = decode_segmentation([polygon], 25, 30)
    canvas = Image.new("L", (30, 25), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    reference = np.asarray(canvas).astype(bool)
    disagree = np.count_nonzero(mask ^ reference)
    # Rasterisers differ only along the boundary: at most ~one pixel per unit of perimeter (~73).
    perimeter = sum(
        np.hypot(polygon[i] - polygon[(i + 2) % 8], polygon[i + 1] - polygon[(i + 3) % 8]) for i in range(0, 8, 2)
    )
    assert disagree <= perimeter, (disagree, perimeter)
    assert np.count_nonzero(mask & reference) / np.count_nonzero(mask | reference) > 0.85


def test_rle_variants_and_size_check():
    mask = checker_mask(11, 13)
    np.testing.assert_array_equal(decode_segmentation(compressed_rle(mask), 11, 13), mask)
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(mask), 11, 13), mask)
    rle = compressed_rle(mask)
    rle["counts"] = rle["counts"].encode("ascii")  # bytes counts work too
    np.testing.assert_array_equal(decode_segmentation(rle, 11, 13), mask)
    with pytest.raises(ValueError, match="does not match"):
        decode_segmentation(compressed_rle(mask), 12, 13)


def test_degenerate_polygons_are_ignored():
    assert not decode_segmentation([[1.0, 1.0]], 5, 5).any()
    assert not decode_segmentation([], 5, 5).any()


def test_group_by_image_is_deterministic(refcoco):
    ds = RefCOCODataset(refcoco.data_root, "refcoco", "val")
    groups = list(ds.group_by_image())
    assert [image_id for image_id, _ in groups] == ["1", "3", "2"]  # first-appearance order
    assert [len(samples) for _, samples in groups] == [3, 1, 1]
    assert sum(len(samples) for _, samples in groups) == len(ds)
    assert groups == list(RefCOCODataset(refcoco.data_root, "refcoco", "val").group_by_image())


def test_split_and_name_validation(tmp_path):
    with pytest.raises(ValueError, match="testA"):
        RefCOCODataset(tmp_path, "refcoco", "test")
    with pytest.raises(ValueError, match="unknown dataset"):
        RefCOCODataset(tmp_path, "refclef", "val")
    with pytest.raises(ValueError, match="split_by"):
        RefCOCODataset(tmp_path, "refcoco+", "val", split_by="google")
    with pytest.raises(ValueError, match="unknown split"):
        RefCOCODataset(tmp_path, "refcocog", "testA")
    with pytest.raises(ValueError, match="unknown split"):
        RefCOCODataset(tmp_path, "refcocog", "test", split_by="google")
    # Names are case-insensitive and construction touches no files.
    ds = RefCOCODataset(tmp_path / "nowhere", "RefCOCO+", "testB")
    assert (ds.name, ds.split_by) == ("refcoco+", "unc")
    assert SPLITS[("refcocog", "umd")] == ("train", "val", "test")


def test_missing_annotation_files_error_is_helpful(tmp_path):
    ds = RefCOCODataset(tmp_path / "data", "refcoco+", "val")
    with pytest.raises(DatasetFilesNotFound) as info:
        len(ds)
    message = str(info.value)
    assert str(tmp_path / "data" / "refcoco+" / "refs(unc).p") in message
    assert "lichengunc/refer" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_instances_json_is_named(refcoco):
    (refcoco.data_root / "refcoco" / "instances.json").unlink()
    with pytest.raises(DatasetFilesNotFound, match="instances.json"):
        RefCOCODataset(refcoco.data_root, "refcoco", "val").samples


def test_missing_images_are_reported(tmp_path):
    fixture = build_refer_fixture(tmp_path / "data", write_images=False)
    ds = RefCOCODataset(fixture.data_root, "refcoco", "val")
    assert len(ds) == 5  # annotations alone are enough to list samples and masks
    assert ds[0].load_mask().any()
    with pytest.raises(DatasetFilesNotFound) as info:
        ds[0].load_image()
    assert "COCO_train2014_000000000001.jpg" in str(info.value) and "cocodataset.org" in str(info.value)
    with pytest.raises(DatasetFilesNotFound, match="3 of 3 images"):
        ds.check_files()
    ds.check_files(images=False)


def test_custom_image_root(tmp_path):
    fixture = build_refer_fixture(tmp_path / "data")
    moved = tmp_path / "coco"
    fixture.image_root.rename(moved)
    ds = RefCOCODataset(fixture.data_root, "refcoco", "val", image_root=moved)
    ds.check_files()
    assert ds[0].image_path.parent == moved
    assert ds[0].load_image().size == (40, 30)


def test_refcocog_umd_and_google(tmp_path):
    root = tmp_path / "data"
    umd = build_refer_fixture(root, "refcocog", "umd")
    google_refs = default_refs(("val", "train"))[:3]
    build_refer_fixture(root, "refcocog", "google", refs=google_refs)

    ds_umd = RefCOCODataset(root, "refcocog", "test")
    assert ds_umd.split_by == "umd" and ds_umd.refs_path.name == "refs(umd).p"
    assert [s.expression for s in ds_umd] == umd.sentences("test")
    assert ds_umd.benchmark == ("refcocog", "test")

    ds_google = RefCOCODataset(root, "refcocog", "val", split_by="google")
    assert ds_google.refs_path.name == "refs(google).p"
    assert [s.expression for s in ds_google] == ["the man on the left", "left guy", "checkered thing"]
    assert ds_google.benchmark == ("refcocog-google", "val")
    assert ds_google[0].sample_id.startswith("refcocog_google_val_")
    # The google split has no test split.
    with pytest.raises(ValueError):
        RefCOCODataset(root, "refcocog", "test", split_by="google")


def test_annotations_are_parsed_once(refcoco, monkeypatch):
    import editseg.data.refer as refer

    calls = []
    original = refer._load_pickle
    monkeypatch.setattr(refer, "_load_pickle", lambda path: calls.append(path) or original(path))
    ds = RefCOCODataset(refcoco.data_root, "refcoco", "val")
    assert calls == []  # lazy
    len(ds), list(ds), ds[0], list(ds.group_by_image())
    assert len(calls) == 1


def test_samples_pickle(refcoco):
    sample = RefCOCODataset(refcoco.data_root, "refcoco", "val")[0]
    clone = pickle.loads(pickle.dumps(sample))
    assert clone == sample
    np.testing.assert_array_equal(clone.load_mask(), sample.load_mask())


# ----------------------------------------------------------------------------- sharding


def _synthetic_samples(seed: int = 0, images: int = 23) -> list[ReferringSample]:
    rng = np.random.default_rng(seed)
    samples = []
    order = rng.permutation(np.repeat(np.arange(images), rng.integers(1, 6, size=images)))
    for i, image in enumerate(order):  # expressions of one image are scattered through the list
        samples.append(ReferringSample(f"s{i}", f"img{image}", None, f"expr {i}"))
    return samples


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 30])
def test_shards_partition_samples_and_keep_images_whole(count):
    samples = _synthetic_samples()
    shards = [shard(samples, i, count) for i in range(count)]
    ids = [s.sample_id for part in shards for s in part]
    assert sorted(ids) == sorted(s.sample_id for s in samples)  # every sample exactly once
    owners = {}
    for index, part in enumerate(shards):
        for sample in part:
            assert owners.setdefault(sample.image_id, index) == index  # an image never spans shards
    # Deterministic, and stable order: concatenating the shards gives the grouped order.
    assert shards == [shard(samples, i, count) for i in range(count)]
    grouped = [s for _, group in group_by_image(samples) for s in group]
    assert [s for part in shards for s in part] == grouped
    if count <= 4:  # balanced within one image group (at most 5 samples)
        sizes = [len(part) for part in shards]
        assert max(sizes) - min(sizes) <= 2 * 5


def test_shard_of_a_dataset(refcoco):
    ds = RefCOCODataset(refcoco.data_root, "refcoco", "val")
    parts = [shard(ds, i, 2) for i in range(2)]
    assert sum(len(p) for p in parts) == len(ds)
    assert {s.image_id for s in parts[0]}.isdisjoint({s.image_id for s in parts[1]})
    sub = SampleList(parts[0], name=ds.name, split=ds.split)
    assert len(sub) == len(parts[0]) and list(sub.group_by_image())


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3/4 ") == (3, 4)
    assert parse_shard("0/1") == (0, 1)
    for bad, message in [("4/4", "0-based"), ("-1/4", "0-based"), ("1/0", "at least 1"), ("1-4", "i/n"),
                         ("a/4", "integers"), ("1/2/3", "i/n"), ("", "i/n")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_shard(bad)
    with pytest.raises(ValueError, match="0-based"):
        shard([], 2, 2)
