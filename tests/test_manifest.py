"""JSONL / CSV manifests: reading, writing, round trips and error reporting."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fixtures_refer import checker_mask, compressed_rle, rect_mask, uncompressed_rle
from PIL import Image

from editseg.data.base import DatasetFilesNotFound, ReferringSample
from editseg.data.manifest import ManifestDataset, ManifestError, load_manifest, write_manifest


@pytest.fixture()
def files(tmp_path):
    """Two images and a PNG mask inside tmp_path, and one image outside the manifest folder."""
    root = tmp_path / "set"
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, size in (("a.jpg", (20, 10)), ("b.png", (16, 12))):
        Image.new("RGB", size, (10, 200, 30)).save(root / "imgs" / name)
    mask = rect_mask(10, 20, (3, 2, 9, 8))
    Image.fromarray(mask.astype(np.uint8) * 7).save(root / "masks" / "a.png")  # any nonzero value is fg
    outside = tmp_path / "elsewhere" / "c.jpg"
    outside.parent.mkdir()
    Image.new("RGB", (8, 6)).save(outside)
    return root, mask, outside


def _write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_jsonl_relative_absolute_png_and_rle(files):
    root, mask_a, outside = files
    rle_mask = checker_mask(12, 16)
    _write_jsonl(
        root / "m.jsonl",
        [
            {"image": "imgs/a.jpg", "expression": "the box", "mask": "masks/a.png", "id": "a1", "note": "x"},
            "",  # blank lines are skipped
            {"image": "imgs/b.png", "expression": "checkers", "rle": compressed_rle(rle_mask)},
            {"image": str(outside), "expression": "no ground truth", "id": 7},
            {"image": "imgs/b.png", "expression": "crowd", "rle": uncompressed_rle(rle_mask)},
        ],
    )
    ds = load_manifest(root / "m.jsonl")
    assert isinstance(ds, ManifestDataset) and ds.name == "m"
    assert [s.sample_id for s in ds] == ["a1", "line3", "7", "line5"]
    assert [s.expression for s in ds] == ["the box", "checkers", "no ground truth", "crowd"]
    assert ds[0].image_path == root / "imgs" / "a.jpg" and ds[2].image_path == outside
    assert ds[0].metadata["note"] == "x" and ds[0].metadata["origin"] == "m.jsonl:1"
    np.testing.assert_array_equal(ds[0].load_mask(), mask_a)
    np.testing.assert_array_equal(ds[1].load_mask(), rle_mask)
    np.testing.assert_array_equal(ds[3].load_mask(), rle_mask)
    assert not ds[2].has_mask
    with pytest.raises(ValueError, match="no ground-truth mask"):
        ds[2].load_mask()
    assert ds[1].load_image().size == (16, 12)
    # Samples of one image are grouped for batching.
    groups = dict(ds.group_by_image())
    assert [s.sample_id for s in groups[ds[1].image_id]] == ["line3", "line5"]
    ds.check_files()


def test_csv_with_same_columns(files):
    root, mask_a, _ = files
    rle_mask = checker_mask(12, 16)
    with (root / "m.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "expression", "mask", "rle", "id", "extra"])
        writer.writerow(["imgs/a.jpg", "box, on the left", "masks/a.png", "", "a", "1"])
        writer.writerow(["imgs/b.png", 'the "checkers"', "", json.dumps(compressed_rle(rle_mask)), "", ""])
    ds = load_manifest(root / "m.csv")
    assert [s.sample_id for s in ds] == ["a", "line3"]
    assert [s.expression for s in ds] == ["box, on the left", 'the "checkers"']
    assert ds[0].metadata["extra"] == "1" and "extra" not in ds[1].metadata
    np.testing.assert_array_equal(ds[0].load_mask(), mask_a)
    np.testing.assert_array_equal(ds[1].load_mask(), rle_mask)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("masks", ["rle", "png"])
def test_round_trip(files, tmp_path, suffix, masks):
    root, mask_a, outside = files
    gt_b = checker_mask(12, 16)
    samples = [
        ReferringSample("s/1", "a", root / "imgs" / "a.jpg", "left box", lambda: mask_a, {"ref_id": 3}),
        ReferringSample("s/2", "b", root / "imgs" / "b.png", "checkers, \"quoted\"", lambda: gt_b),
        ReferringSample("s/3", "c", outside, "no mask"),
    ]
    path = write_manifest(samples, root / f"out{suffix}", masks=masks)
    text = path.read_text()
    assert "imgs/a.jpg" in text and str(root) not in text.replace(str(outside), "")  # relative inside
    assert str(outside) in text  # absolute outside the manifest folder
    back = load_manifest(path)
    assert [s.sample_id for s in back] == ["s/1", "s/2", "s/3"]
    assert [s.expression for s in back] == [s.expression for s in samples]
    assert [s.image_path.resolve() for s in back] == [s.image_path.resolve() for s in samples]
    np.testing.assert_array_equal(back[0].load_mask(), mask_a)
    np.testing.assert_array_equal(back[1].load_mask(), gt_b)
    assert not back[2].has_mask
    if suffix == ".jsonl":
        assert back[0].metadata["ref_id"] == 3
    if masks == "png":
        assert (root / "out_masks").is_dir()


def test_write_without_masks(files):
    root, mask_a, _ = files
    sample = ReferringSample("x", "a", root / "imgs" / "a.jpg", "box", lambda: mask_a)
    back = load_manifest(write_manifest([sample], root / "plain.jsonl", masks="none"))
    assert not back[0].has_mask
    with pytest.raises(ValueError, match="masks must be"):
        write_manifest([sample], root / "bad.jsonl", masks="npz")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"expression": "x"}', "'image'"),
        ('{"image": "imgs/a.jpg", "expression": "  "}', "'expression'"),
        (
            '{"image": "imgs/a.jpg", "expression": "x", "mask": "m.png", "rle": {"size": [1, 1], "counts": "1"}}',
            "not both",
        ),
        ('{"image": "imgs/a.jpg", "expression": "x", "rle": {"counts": "abc"}}', "'rle'"),
        ('{"image": "imgs/a.jpg", "expression": "x", "rle": {"size": [2, 2], "counts": [1, 1]}}', "sum to 2"),
        ('{"image": "imgs/a.jpg", "expression": "x", "id": [1]}', "'id'"),
        ('{"image": "imgs/a.jpg", "expression": "x", "id": "a1"}', "duplicate id 'a1'"),
    ],
)
def test_malformed_jsonl_lines_report_line_numbers(files, line, message):
    root, _, _ = files
    good = json.dumps({"image": "imgs/a.jpg", "expression": "fine", "id": "a1"})
    _write_jsonl(root / "bad.jsonl", [good, "", line])
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(root / "bad.jsonl")
    assert info.value.line == 3
    assert str(info.value).startswith(f"{root / 'bad.jsonl'}:3:")


def test_malformed_csv_rows_report_line_numbers(files):
    root, _, _ = files
    (root / "bad.csv").write_text("image,expression\nimgs/a.jpg,ok\nimgs/a.jpg,ok,extra\n")
    with pytest.raises(ManifestError, match="more fields") as info:
        load_manifest(root / "bad.csv")
    assert info.value.line == 3
    (root / "bad2.csv").write_text("image,expression,rle\nimgs/a.jpg,ok,{oops\n")
    with pytest.raises(ManifestError, match=r"bad2.csv:2: 'rle' is not valid JSON"):
        load_manifest(root / "bad2.csv")
    (root / "bad3.csv").write_text("path,text\nimgs/a.jpg,ok\n")
    with pytest.raises(ManifestError, match="header"):
        load_manifest(root / "bad3.csv")


def test_missing_files_are_reported_lazily(files):
    root, _, _ = files
    _write_jsonl(
        root / "m.jsonl",
        [
            {"image": "imgs/missing.jpg", "expression": "x", "mask": "masks/a.png"},
            {"image": "imgs/a.jpg", "expression": "y", "mask": "masks/missing.png"},
        ],
    )
    ds = load_manifest(root / "m.jsonl")  # parsing does not touch the files
    with pytest.raises(DatasetFilesNotFound, match=r"missing\.jpg") as info:
        ds[0].load_image()
    assert "m.jsonl:1" in str(info.value)
    with pytest.raises(DatasetFilesNotFound, match=r"m\.jsonl:2.*missing\.png|missing\.png"):
        ds[1].load_mask()
    with pytest.raises(DatasetFilesNotFound) as info:
        ds.check_files()
    assert "2 files" in str(info.value) and "missing.jpg" in str(info.value) and "missing.png" in str(info.value)


def test_unknown_format_and_missing_manifest(tmp_path):
    with pytest.raises(ValueError, match="unknown manifest format"):
        load_manifest(tmp_path / "m.txt")
    with pytest.raises(DatasetFilesNotFound, match="manifest not found"):
        load_manifest(tmp_path / "nope.jsonl")
