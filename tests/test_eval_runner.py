"""The evaluation runner: records, resume, truncated lines, settings checks, shards + merge, gallery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_refer import build_refer_fixture, compressed_rle
from PIL import Image

from editseg.config import MethodConfig
from editseg.data.base import ReferringSample, SampleList
from editseg.data.refer import RefCOCODataset
from editseg.data.shapes_dataset import shapes_benchmark_dataset
from editseg.evaluation import runner
from editseg.evaluation.metrics import MetricAccumulator
from editseg.evaluation.report import select_gallery, write_gallery
from editseg.evaluation.runner import (
    EvaluationError,
    SettingsMismatchError,
    evaluate,
    markdown_table,
    merge_records,
    read_records,
    select_samples,
)
from editseg.masks import decode_rle, load_mask_png


def scaled_refer_fixture(root: Path, factor: int = 4):
    """The refer test fixture with every image and annotation ``factor`` times larger (the model needs >= 64 px)."""
    fixture = build_refer_fixture(root)
    path = fixture.data_root / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    for image in instances["images"]:
        image["width"] *= factor
        image["height"] *= factor
    for ann in instances["annotations"]:
        seg = ann["segmentation"]
        if isinstance(seg, list):
            ann["segmentation"] = [[v * factor for v in polygon] for polygon in seg]
        else:
            ann["segmentation"] = compressed_rle(np.kron(fixture.masks[ann["id"]], np.ones((factor, factor), bool)))
    path.write_text(json.dumps(instances))
    for file in fixture.image_root.iterdir():
        with Image.open(file) as image:
            image.resize((image.width * factor, image.height * factor), Image.NEAREST).save(file, format="JPEG")
    return fixture


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    fixture = scaled_refer_fixture(tmp_path_factory.mktemp("refer"))
    return RefCOCODataset(fixture.data_root, "refcoco", "val")


@pytest.fixture(scope="module")
def full_run(seg, dataset, tmp_path_factory):
    """One uninterrupted, unsharded run: (records path, summary)."""
    path = tmp_path_factory.mktemp("full") / "records.jsonl"
    return path, evaluate(seg, dataset, path, progress=False)


def comparable(summary: dict) -> dict:
    """Everything in a summary that must not depend on how the run was split up."""
    return {k: v for k, v in summary.items() if k != "run"}


def by_id(records: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["intersection"], r["union"], r["point_hit"], r["iou"]) for r in records}


def test_records_and_summary(full_run, dataset):
    path, summary = full_run
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == runner.RECORDS_FORMAT
    settings = header["settings"]
    assert settings["model"] == "tiny-random-flux2" and settings["dataset"] == "refcoco" and settings["split"] == "val"
    assert settings["config"]["tau"] == 0.8 and settings["shard"] is None and settings["max_side"] is None
    records = [json.loads(line) for line in lines[1:]]
    # Grouped by image (first appearance), dataset order inside an image.
    assert [r["id"] for r in records] == [s.sample_id for s in dataset]
    for record, sample in zip(records, dataset):
        assert record["image_id"] == sample.image_id and record["expression"] == sample.expression
        assert record["instruction"] == f"remove {sample.expression}"
        assert 0 <= record["intersection"] <= record["union"]
        assert record["iou"] == pytest.approx(record["intersection"] / record["union"])
        assert isinstance(record["point_hit"], bool)
        assert record["size"] == [sample.metadata["width"], sample.metadata["height"]]
        assert {"transformer_s", "image_load_s", "score_s"} <= record["timings"].keys()
    expected = MetricAccumulator(
        {"sample_id": r["id"], "intersection": r["intersection"], "union": r["union"], "point_hit": r["point_hit"]}
        for r in records
    ).summary(percent=True)
    assert summary["metrics"] == expected and summary["num_samples"] == 5
    assert summary["benchmark"] == ["refcoco", "val"] and summary["run"]["complete"]
    assert json.loads((path.parent / "summary.json").read_text()) == summary
    table = (path.parent / "table.md").read_text()
    assert "| refcoco val oIoU | refcoco val mIoU |" in table
    assert "| RefAM | published (Table 1) | 46.91 | 57.24 |" in table
    assert "**editseg: tiny-random-flux2** | ours" in table


def test_resume_after_interruption_equals_uninterrupted(seg, dataset, full_run, tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    original = runner._evaluate_image
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash on the third image")
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "_evaluate_image", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(seg, dataset, path, progress=False)
    _, partial = read_records(path)
    assert len(partial) == 4  # images 1 (3 samples) and 3 (1 sample) were flushed
    monkeypatch.setattr(runner, "_evaluate_image", original)
    summary = evaluate(seg, dataset, path, progress=False)
    _, records = read_records(path)
    assert len(records) == len({r["id"] for r in records}) == 5
    assert summary["run"]["resumed_from"] == 4 and summary["run"]["evaluated_now"] == 1
    assert by_id(records) == by_id(read_records(full_run[0])[1])
    assert comparable(summary) == comparable(full_run[1])
    # A third run has nothing left to do and changes nothing.
    again = evaluate(seg, dataset, path, progress=False)
    assert again["run"]["evaluated_now"] == 0 and comparable(again) == comparable(full_run[1])


def test_truncated_last_line_is_dropped_and_redone(seg, dataset, full_run, tmp_path):
    path = tmp_path / "records.jsonl"
    shutil.copy(full_run[0], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 25])  # cut into the last record
    with pytest.warns(UserWarning, match="truncated"):
        summary = evaluate(seg, dataset, path, progress=False)
    assert summary["run"]["evaluated_now"] == 1
    _, records = read_records(path)
    assert len(records) == 5 and comparable(summary) == comparable(full_run[1])
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_damaged_middle_line_is_an_error(full_run, tmp_path):
    path = tmp_path / "records.jsonl"
    lines = full_run[0].read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    path.write_text("".join(lines))
    with pytest.raises(EvaluationError, match=":3: not a valid record line"):
        read_records(path)


def test_resume_with_other_settings_is_refused(seg, dataset, full_run, tmp_path):
    path = tmp_path / "records.jsonl"
    shutil.copy(full_run[0], path)
    with pytest.raises(SettingsMismatchError, match="config.tau: 0.8 there, 0.7 here"):
        evaluate(seg, dataset, path, config=MethodConfig(tau=0.7), progress=False)
    with pytest.raises(SettingsMismatchError, match="shard"):
        evaluate(seg, dataset, path, shard="0/2", progress=False)
    assert path.read_bytes() == full_run[0].read_bytes()


def test_shards_merge_to_the_unsharded_summary(seg, dataset, full_run, tmp_path):
    paths = []
    for index in range(2):
        path = tmp_path / runner.records_filename((index, 2))
        evaluate(seg, dataset, path, shard=f"{index}/2", progress=False)
        paths.append(path)
    assert paths[0].name == "records-shard0of2.jsonl" and (tmp_path / "summary-shard0of2.json").is_file()
    shard_ids = [[r["id"] for r in read_records(p)[1]] for p in paths]
    assert shard_ids[0] and shard_ids[1] and not set(shard_ids[0]) & set(shard_ids[1])
    merged = merge_records(paths, tmp_path / "summary.json", tmp_path / "table.md")
    assert comparable(merged) == comparable(full_run[1])
    assert merged["run"]["missing_shards"] == []
    assert json.loads((tmp_path / "summary.json").read_text()) == merged
    with pytest.warns(UserWarning, match="without shard"):
        assert merge_records(paths[:1])["num_samples"] == len(shard_ids[0])
    with pytest.raises(EvaluationError, match="is in both"):
        merge_records([paths[0], full_run[0]])


def test_merge_refuses_other_settings(full_run, tmp_path):
    path = tmp_path / "records.jsonl"
    lines = full_run[0].read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["settings"]["model"] = "flux2-klein-4b"
    path.write_text(json.dumps(header) + "\n")
    with pytest.raises(SettingsMismatchError, match="model"):
        merge_records([full_run[0], path])


def test_selection_order_ids_limit_shard(dataset):
    ids = [s.sample_id for s in dataset]
    assert [s.sample_id for s in select_samples(dataset, ids=[ids[3], ids[0]])] == [ids[0], ids[3]]
    assert [s.sample_id for s in select_samples(dataset, limit=2)] == ids[:2]
    halves = [select_samples(dataset, limit=4, shard_spec=f"{i}/2") for i in range(2)]
    assert sorted(s.sample_id for h in halves for s in h) == sorted(ids[:4])
    with pytest.raises(EvaluationError, match="not in the dataset"):
        select_samples(dataset, ids=["nope"])
    with pytest.raises(EvaluationError, match="0-based"):
        select_samples(dataset, shard_spec="2/2")


def test_limit_ids_and_saved_masks(seg, dataset, tmp_path):
    first = dataset[0]
    summary = evaluate(seg, dataset, tmp_path / "a" / "records.jsonl", ids=[first.sample_id], save_masks="png", progress=False)
    assert summary["num_samples"] == 1 and summary["run"]["selected"] == 1
    record = read_records(tmp_path / "a" / "records.jsonl")[1][0]
    mask = load_mask_png(tmp_path / "a" / record["mask_file"])
    assert mask.shape == first.load_mask().shape and int(mask.sum()) == record["pred_area"]
    evaluate(seg, dataset, tmp_path / "b" / "records.jsonl", limit=1, save_masks="rle", progress=False)
    record_b = read_records(tmp_path / "b" / "records.jsonl")[1][0]
    np.testing.assert_array_equal(decode_rle(record_b["mask_rle"]), mask)
    assert "subset: 1 of 5" in (tmp_path / "b" / "table.md").read_text()


def test_samples_without_ground_truth_are_refused(seg, dataset, tmp_path):
    sample = dataset[0]
    bare = ReferringSample(sample.sample_id, sample.image_id, sample.image_path, sample.expression)
    with pytest.raises(EvaluationError, match="no ground-truth mask"):
        evaluate(seg, SampleList([bare]), tmp_path / "records.jsonl", progress=False)


def test_shapes_dataset_adapter():
    dataset = shapes_benchmark_dataset(3)
    assert len(dataset) == 3 and dataset.benchmark == ("shapes", "full")
    sample = dataset[0]
    assert sample.image_id == sample.sample_id == "shapes-test-s314159-000000"
    assert sample.load_image().size == (64, 64) and sample.load_mask().shape == (64, 64)
    assert sample.metadata["instruction"].endswith(sample.expression)


def test_gallery_sheet(seg, dataset, full_run, tmp_path):
    records = read_records(full_run[0])[1]
    best, worst = select_gallery(records, 2)
    assert [r["iou"] for r in best] == sorted((r["iou"] for r in records), reverse=True)[:2]
    assert not {r["id"] for r in best} & {r["id"] for r in worst} and len(worst) == 2
    out = write_gallery(seg, list(dataset), full_run[0], tmp_path / "gallery.png", k=1, height=64)
    with Image.open(out) as sheet:
        assert sheet.width > 5 * 64 and sheet.height > 2 * 64


def test_table_lists_several_benchmarks(full_run):
    other = json.loads(json.dumps(full_run[1]))
    other["benchmark"] = ["refcoco+", "val"]
    table = markdown_table([full_run[1], other])
    assert "refcoco val oIoU" in table and "refcoco+ val mIoU" in table
    assert "| Ours (FLUX.2-klein 9B) | published (Table 1) | 50.13 | 54.02 | 40.17 | 44.15 |" in table
