"""Issue 13 §2, evaluation items: --limit over a fuller records file (3), samples the model cannot
take (18, 4), a corrupt record in the middle of a file (17)."""

from __future__ import annotations

import json

import pytest

from editseg.data.base import ReferringSample, SampleList
from editseg.data.manifest import ManifestDataset
from editseg.data.shapes import save_samples_as_manifest, shapes_benchmark
from editseg.evaluation.runner import EvaluationError, evaluate, read_records

LONG = " ".join(["zebra"] * 600)


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    return save_samples_as_manifest(shapes_benchmark(6), tmp_path_factory.mktemp("shapes")).parent


def dataset_with(manifest_dir, tmp_path, expressions: dict[int, str]) -> ManifestDataset:
    """The 6-sample shapes manifest with some expressions replaced."""
    lines = [json.loads(line) for line in (manifest_dir / "manifest.jsonl").read_text().splitlines()]
    for index, expression in expressions.items():
        lines[index]["expression"] = expression
    for line in lines:
        line["image"] = str(manifest_dir / line["image"])
        line["mask"] = str(manifest_dir / line["mask"])
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ManifestDataset(path)


def test_limit_reports_the_selection_not_the_whole_file(seg, manifest_dir, tmp_path):
    dataset = dataset_with(manifest_dir, tmp_path, {})
    records = tmp_path / "run" / "records.jsonl"
    full = evaluate(seg, dataset, records, progress=False)
    assert full["num_samples"] == 6
    limited = evaluate(seg, dataset, records, limit=2, progress=False)
    assert limited["num_samples"] == 2
    assert limited["run"]["selected"] == 2 and limited["run"]["resumed_from"] == 2 and limited["run"]["evaluated_now"] == 0
    assert limited["run"]["records_in_file"] == 6 and limited["run"]["outside_selection"] == 4
    first_two = {r["id"]: r for r in read_records(records)[1][:2]}
    expected_miou = 100 * sum(r["iou"] for r in first_two.values()) / 2
    assert limited["metrics"]["mIoU"] == pytest.approx(expected_miou)
    assert len(read_records(records)[1]) == 6  # nothing lost from the file


def test_unusable_samples_are_recorded_as_failed_and_the_run_goes_on(seg, manifest_dir, tmp_path):
    dataset = dataset_with(manifest_dir, tmp_path, {1: "the", 3: LONG})
    records = tmp_path / "run" / "records.jsonl"
    summary = evaluate(seg, dataset, records, progress=False)
    assert summary["num_samples"] == 6 and summary["run"]["complete"]
    failed = {f["id"]: f["reason"] for f in summary["failed"]["samples"]}
    assert summary["failed"]["count"] == 2
    ids = [s.sample_id for s in dataset]
    assert set(failed) == {ids[1], ids[3]}
    assert "stop words" in failed[ids[1]] and "too long" in failed[ids[3]]
    by_id = {r["id"]: r for r in read_records(records)[1]}
    for sample_id in failed:
        record = by_id[sample_id]
        assert record["iou"] == 0 and record["intersection"] == 0 and record["union"] == record["gt_area"] > 0
        assert record["point_hit"] is False
    # counted: mIoU is the mean over all six, the failed ones as 0
    assert summary["metrics"]["mIoU"] == pytest.approx(100 * sum(r["iou"] for r in by_id.values()) / 6)
    again = evaluate(seg, dataset, records, progress=False)  # resume redoes nothing and counts nothing twice
    assert again["run"]["evaluated_now"] == 0 and again["num_samples"] == 6 and again["failed"]["count"] == 2


def test_refuse_checks_every_sample_before_any_forward(seg, manifest_dir, tmp_path, monkeypatch):
    dataset = dataset_with(manifest_dir, tmp_path, {2: "🐶", 4: LONG, 5: "it"})
    monkeypatch.setattr(type(seg.backbone), "probe_forward", lambda *a, **k: pytest.fail("no forward before refusing"))
    records = tmp_path / "run" / "records.jsonl"
    with pytest.raises(EvaluationError) as info:
        evaluate(seg, dataset, records, invalid="refuse", progress=False)
    text = str(info.value)
    assert text.startswith("3 of 6 samples cannot be segmented") and "emoji" in text and "too long" in text
    assert "--invalid record" in text and "\n" not in text
    assert not records.exists()


def test_a_sample_refused_while_running_fails_alone_not_its_image(seg, tmp_path, monkeypatch, manifest_dir):
    """Backbones that cannot count tokens up front refuse inside the forward: the rest of the image's samples still run."""
    base = list(ManifestDataset(manifest_dir / "manifest.jsonl"))[0]
    samples = [
        ReferringSample(f"s{i}", "img", base.image_path, expression, base.mask_loader)
        for i, expression in enumerate(["the white circle", LONG, "a red square"])
    ]
    monkeypatch.setattr(type(seg), "expression_problems", lambda self, expressions, config=None: {})
    summary = evaluate(seg, SampleList(samples, name="one-image"), tmp_path / "records.jsonl", progress=False)
    assert [f["id"] for f in summary["failed"]["samples"]] == ["s1"]
    records = {r["id"]: r for r in read_records(tmp_path / "records.jsonl")[1]}
    assert set(records) == {"s0", "s1", "s2"} and "failed" not in records["s0"] and "failed" not in records["s2"]
    with pytest.raises(Exception, match="too long"):
        evaluate(seg, SampleList(samples, name="one-image"), tmp_path / "strict.jsonl", invalid="refuse", progress=False)


def test_an_unreadable_image_is_a_failed_sample(seg, tmp_path, manifest_dir):
    base = list(ManifestDataset(manifest_dir / "manifest.jsonl"))[0]
    broken = tmp_path / "cut.png"
    broken.write_bytes(base.image_path.read_bytes()[:80])
    samples = [ReferringSample("ok", "a", base.image_path, "the white circle", base.mask_loader),
               ReferringSample("bad", "b", broken, "the white circle", base.mask_loader)]
    summary = evaluate(seg, SampleList(samples, name="cut"), tmp_path / "records.jsonl", progress=False)
    assert summary["failed"]["count"] == 1 and summary["failed"]["samples"][0]["id"] == "bad"
    assert "Cannot read" in summary["failed"]["samples"][0]["reason"]


def test_corrupt_record_in_the_middle_names_the_line_and_the_repair(seg, manifest_dir, tmp_path):
    dataset = dataset_with(manifest_dir, tmp_path, {})
    records = tmp_path / "run" / "records.jsonl"
    evaluate(seg, dataset, records, limit=3, progress=False)
    lines = records.read_text().splitlines(keepends=True)
    lines[2] = '{"id": "broken", "inters\n'  # line 3 of 4: header, record, BROKEN, record
    records.write_text("".join(lines))
    with pytest.raises(EvaluationError) as info:
        evaluate(seg, dataset, records, limit=3, progress=False)
    assert f"{records}:3:" in str(info.value) and f"sed -i '3d' '{records}'" in str(info.value)
    del lines[2]  # the repair the message names, then a resume redoes exactly that sample
    records.write_text("".join(lines))
    summary = evaluate(seg, dataset, records, limit=3, progress=False)
    assert summary["run"]["evaluated_now"] == 1 and summary["num_samples"] == 3
