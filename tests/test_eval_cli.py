"""``editseg eval`` / ``eval-merge`` end to end on tiny generated data, and their error messages."""

from __future__ import annotations

import json

import pytest
from test_eval_runner import scaled_refer_fixture

from editseg.cli.main import main
from editseg.data.shapes import save_samples_as_manifest, shapes_benchmark
from editseg.evaluation.runner import RECORDS_FORMAT, read_records


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    return scaled_refer_fixture(tmp_path_factory.mktemp("refer")).data_root


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return save_samples_as_manifest(shapes_benchmark(4), tmp_path_factory.mktemp("shapes"))


@pytest.fixture()
def shared_model(monkeypatch, tiny_backbone):
    """Serve every ``--model`` from the session's warm tiny random backbone (loading is tested elsewhere)."""
    import warnings

    import editseg.cli.options as cli
    from editseg import Segmenter

    def segmenter_from_args(args):
        loads.append(args.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Segmenter(tiny_backbone, config=cli.config_from_args(args), batch_size=args.batch_size, max_side=args.max_side)

    loads: list[str] = []
    monkeypatch.setattr(cli, "segmenter_from_args", segmenter_from_args)
    return loads


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "run"}


def test_eval_refcoco_writes_records_summary_table(refer_root, tmp_path, capsys, shared_model):
    out = tmp_path / "run"
    argv = ["eval", "--dataset", "refcoco", "--split", "val", "--data-root", str(refer_root), "--out", str(out),
            "--limit", "3", "--tau", "0.7", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "refcoco val: 3 samples  oIoU" in captured.out and shared_model == [None]  # --model unset: the method picks its default (toy-shapes)
    header, records = read_records(out / "records.jsonl")
    assert header["settings"]["config"]["tau"] == 0.7 and len(records) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 3 and summary["run"]["selected"] == 3
    assert "published (Table 1)" in (out / "table.md").read_text()
    # Same command again: resumes, nothing to do, same summary.
    assert main(argv) == 0
    assert comparable(json.loads((out / "summary.json").read_text())) == comparable(summary)
    assert len(read_records(out / "records.jsonl")[1]) == 3
    capsys.readouterr()
    # Other settings on the same --out: refused before the model is loaded.
    assert main([*argv[:-3], "--tau", "0.8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "config.tau: 0.7 there, 0.8 here" in err and "Traceback" not in err
    assert len(shared_model) == 2  # the first two runs loaded the model, the refused one did not


def test_eval_manifest_with_masks_and_gallery(manifest, tmp_path, shared_model):
    out = tmp_path / "run"
    argv = ["eval", "--dataset", "manifest", "--manifest", str(manifest), "--out", str(out), "--save-masks", "png",
            "--gallery", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    _, records = read_records(out / "records.jsonl")
    assert len(records) == 4 and all((out / r["mask_file"]).is_file() for r in records)
    assert (out / "gallery.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["benchmark"] == ["manifest", "val"]


def test_eval_shards_then_merge_equal_unsharded(manifest, tmp_path, capsys, shared_model):
    common = ["eval", "--dataset", "manifest", "--manifest", str(manifest), "--limit", "3", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    for index in range(2):
        assert main([*common, "--out", str(tmp_path / "sharded"), "--shard", f"{index}/2"]) == 0
    assert sorted(p.name for p in (tmp_path / "sharded").glob("records*")) == [
        "records-shard0of2.jsonl", "records-shard1of2.jsonl",
    ]  # fmt: skip
    assert main(["eval-merge", str(tmp_path / "sharded")]) == 0
    merged = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert comparable(merged) == comparable(full)
    assert "manifest val: 3 samples" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "refcoco", "--data-root", "{empty}"], "annotation file not found"),
        (["--dataset", "refcoco"], "needs --data-root"),
        (["--dataset", "refcoco", "--data-root", "{refer}", "--split", "testC"], "unknown split 'testC'"),
        (["--dataset", "refcoco", "--data-root", "{refer}", "--shard", "2/2"], "0-based"),
        (["--dataset", "refcoco", "--data-root", "{refer}", "--ids", "nope"], "not in the dataset"),
        (["--dataset", "refcoco", "--data-root", "{refer}", "--image-root", "{empty}"], "images are missing"),
        (["--dataset", "refcoco", "--data-root", "{refer}", "--tau", "2"], "tau"),
        (["--dataset", "manifest"], "needs --manifest"),
        (["--dataset", "manifest", "--manifest", "{empty}/none.jsonl"], "manifest not found"),
        (["--dataset", "manifest", "--manifest", "{bad_manifest}"], "bad.jsonl:1"),
        (["--dataset", "manifest", "--manifest", "{manifest}", "--out", "{other_run}"], "other settings"),
    ],
)
def test_eval_errors_are_messages(argv, message, refer_root, manifest, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png"}\n')
    other_run = tmp_path / "other"
    other_run.mkdir()
    (other_run / "records.jsonl").write_text(json.dumps({"format": RECORDS_FORMAT, "settings": {"model": "x"}}) + "\n")
    values = {"{empty}": str(empty), "{refer}": str(refer_root), "{manifest}": str(manifest),
              "{bad_manifest}": str(bad), "{other_run}": str(other_run)}  # fmt: skip
    full = ["eval", *argv] + ([] if "--out" in argv else ["--out", str(tmp_path / "out")]) + ["--no-progress"]
    for key, value in values.items():
        full = [a.replace(key, value) for a in full]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_table_over_several_runs(tmp_path, capsys):
    base = {"format": "editseg-eval-summary/1", "settings": {"model": "m", "config": {"mode": "full"}},
            "num_samples": 2, "metrics": {"oIoU": 50.0, "mIoU": 40.0}, "run": {}}  # fmt: skip
    for name, benchmark in (("a", ["refcoco", "val"]), ("b", ["refcocog", "val"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({**base, "benchmark": benchmark}))
    assert main(["eval-table", str(tmp_path / "a"), str(tmp_path / "b" / "summary.json")]) == 0
    out = capsys.readouterr().out
    assert "| refcoco val oIoU | refcoco val mIoU | refcocog val oIoU | refcocog val mIoU |" in out
    assert "| **editseg: m** | ours | 50.00 | 40.00 | 50.00 | 40.00 |" in out
    assert "| RefAM | published (Table 1) | 46.91 | 57.24 | 45.53 | 47.11 |" in out
    assert main(["eval-table", str(tmp_path)]) == 2
    assert "summary not found" in capsys.readouterr().err


def test_eval_merge_errors_are_messages(tmp_path, capsys):
    assert main(["eval-merge", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval-merge", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err


def test_eval_help_lists_data_run_model_and_method_flags(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-root", "--image-root", "--split-by", "--manifest", "--limit", "--ids",
                 "--shard", "--save-masks", "--gallery", "--model", "--device", "--tau", "--mode"):  # fmt: skip
        assert flag in text


def test_shard_auto_reads_the_launcher_environment():
    import argparse

    import pytest as _pytest

    from editseg.cli.evaluation import resolve_launcher_shard
    from editseg.evaluation.runner import EvaluationError

    args = argparse.Namespace(shard="auto", device="cpu")
    resolve_launcher_shard(args, {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"})
    assert args.shard == "2/4" and args.device == "cpu"  # an explicit device is kept
    untouched = argparse.Namespace(shard="1/3", device=None)
    resolve_launcher_shard(untouched, {"RANK": "0", "WORLD_SIZE": "8"})
    assert untouched.shard == "1/3"
    with _pytest.raises(EvaluationError, match="torchrun"):
        resolve_launcher_shard(argparse.Namespace(shard="auto", device=None), {})
