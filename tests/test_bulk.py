"""Folders and videos on the built-in toy-shapes model: records, masks, resume, smoothing, limits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from editseg.data.shapes import ShapesWorld
from editseg.masks import decode_rle, load_mask_png


@pytest.fixture()
def toy(toy_segmenter):
    return toy_segmenter


def _scenes(n: int, size: int = 64) -> list[np.ndarray]:
    world = ShapesWorld(image_size=size, seed=3)
    return [np.asarray(world.sample("test", i).image) for i in range(n)]


# -- folders ------------------------------------------------------------------------------------------
def test_collect_jobs_folder_glob_manifest(tmp_path):
    from editseg.bulk.folder import FolderError, collect_jobs, is_bulk_input

    (tmp_path / "sub").mkdir()
    for i, scene in enumerate(_scenes(3)):
        Image.fromarray(scene).save(tmp_path / ("sub" if i == 2 else ".") / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    jobs = collect_jobs(str(tmp_path), ["star", "circle"])
    assert [j.image for j in jobs] == ["img0.png", "img1.png"]
    assert jobs[0].items == [("img0.png#0", "star"), ("img0.png#1", "circle")]
    assert [j.image for j in collect_jobs(str(tmp_path), ["star"], recursive=True)] == ["img0.png", "img1.png", "sub/img2.png"]
    assert [j.image for j in collect_jobs(str(tmp_path / "**" / "*.png"), ["star"])] == ["img0.png", "img1.png", "sub/img2.png"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"image": "img0.png", "expression": "the star", "id": "a"},
        {"image": "sub/img2.png", "expression": "the circle", "id": "b"},
        {"image": "img0.png", "expression": "the square", "id": "c"},
    ]))  # fmt: skip
    jobs = collect_jobs(str(manifest))
    assert [(j.image, j.items) for j in jobs] == [("img0.png", [("a", "the star"), ("c", "the square")]), ("sub/img2.png", [("b", "the circle")])]
    assert is_bulk_input(str(tmp_path)) and is_bulk_input(str(manifest)) and is_bulk_input("x/*.jpg")
    assert not is_bulk_input(str(tmp_path / "img0.png"))
    with pytest.raises(FolderError, match="not both"):
        collect_jobs(str(manifest), ["star"])
    with pytest.raises(FolderError, match="No image files"):
        collect_jobs(str(tmp_path / "*.gif"), ["star"])


def test_segment_folder_records_masks_and_resume(toy, tmp_path):
    from editseg.bulk.folder import SettingsMismatchError, collect_jobs, read_records, segment_folder

    images = tmp_path / "in"
    images.mkdir()
    for i, scene in enumerate(_scenes(3)):
        Image.fromarray(scene).save(images / f"s{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    jobs = collect_jobs(str(images), ["the star", "the circle"])
    out = tmp_path / "out"
    counts = segment_folder(toy, jobs[:2], out, progress=False)
    assert counts == {"total": 4, "done_before": 0, "done_now": 4, "errors": 2}  # broken.png sorts first
    # simulate a kill in the middle of writing a record: a half line at the end
    records_path = out / "records.jsonl"
    with records_path.open("a") as handle:
        handle.write('{"id": "s1.png#0", "image": "s1.p')
    with pytest.warns(UserWarning, match="half-written"):
        counts = segment_folder(toy, jobs, out, progress=False)
    assert counts["done_before"] == 4 and counts["done_now"] == 4
    header, records = read_records(records_path)
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(i for j in jobs for i, _ in j.items) and len(ids) == len(set(ids))
    for record in records:
        if "error" in record:
            assert record["image"] == "broken.png" and "not an image" in record["error"]
            continue
        mask = decode_rle(record["mask_rle"])
        assert np.array_equal(load_mask_png(out / record["mask_file"]), mask)
        assert record["mask_area"] == int(mask.sum()) and record["size"] == [64, 64]
    # the masks are what a direct call gives
    first = next(r for r in records if r["id"] == "s0.png#1")
    toy.set_image(images / "s0.png")
    assert np.array_equal(toy.predict(["the circle"])[0].mask, decode_rle(first["mask_rle"]))
    # nothing left to do; other settings are refused
    assert segment_folder(toy, jobs, out, progress=False)["done_now"] == 0
    with pytest.raises(SettingsMismatchError):
        segment_folder(toy, jobs, out, config=toy.config.replace(tau=0.5), progress=False)


# -- video ----------------------------------------------------------------------------------------------
def _write_clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "0"} if stream.codec_context.name == "libx264" else {}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    pytest.importorskip("av")
    scene = _scenes(1)[0]
    frames = [np.roll(scene, 2 * t, axis=1) for t in range(8)]  # the scene slides right
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    _write_clip(path, frames)
    return path


def test_smooth_window_is_a_majority_vote():
    from editseg.bulk.video import smooth_window

    rng = np.random.default_rng(0)
    masks = [rng.random((5, 6)) > 0.5 for _ in range(3)]
    expected = (masks[0].astype(int) + masks[1] + masks[2]) >= 2
    assert np.array_equal(smooth_window(masks), expected)
    two = masks[:2]
    assert np.array_equal(smooth_window(two), masks[0] | masks[1])  # ties count as foreground


def test_segment_video_smoothing_outputs_and_limits(toy, clip, tmp_path):
    import av

    from editseg.bulk.video import probe, read_frames, segment_video

    expressions = ["the star", "the circle"]
    summary = segment_video(toy, clip, expressions, tmp_path, smooth=3, png=True, progress=False)
    assert summary["frames"] == 8 and summary["fps"] == pytest.approx(10)
    assert {"the-star.mask.mp4", "the-star.overlay.mp4", "the-circle.mask.mp4", "records.jsonl"} <= set(summary["files"])
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 16
    # independent reference: raw per-frame masks, then a naive centred 3-frame majority vote
    raw = []
    for frame in read_frames(clip):
        toy.set_image(frame.image)
        raw.append([r.mask for r in toy.predict(expressions)])
    for record in records:
        t, e = record["frame"], expressions.index(record["expression"])
        window = [raw[k][e].astype(int) for k in range(max(0, t - 1), min(8, t + 2))]
        expected = np.sum(window, axis=0) * 2 >= len(window)
        got = decode_rle(record["mask_rle"])
        assert np.array_equal(got, expected), t
        assert np.array_equal(load_mask_png(tmp_path / record["expression"].replace(" ", "-") / f"frame_{t:06d}.png"), got)
    # the mask video holds the same masks (lossy codec: compare at a threshold)
    with av.open(str(tmp_path / "the-star.mask.mp4")) as container:
        decoded = [np.asarray(f.to_ndarray(format="gray")) > 127 for f in container.decode(video=0)]
    assert len(decoded) == 8
    star = [decode_rle(r["mask_rle"]) for r in records if r["expression"] == "the star"]
    agreement = np.mean([np.mean(d[:64, :64] == s) for d, s in zip(decoded, star)])
    assert agreement > 0.98
    # limits: frame rate and frame count
    assert probe(clip).fps == pytest.approx(10)
    assert [f.index for f in read_frames(clip, fps=5)] == [0, 2, 4, 6]
    with pytest.warns(UserWarning, match="max-frames"):
        assert len(list(read_frames(clip, max_frames=3))) == 3
    limited = segment_video(toy, clip, ["the star"], tmp_path / "lim", fps=5, max_frames=3, mask_video=False,
                            overlay_video=False, progress=False)  # fmt: skip
    assert limited["frames"] == 3 and limited["fps"] == pytest.approx(5)


def test_segment_folder_cli_resumes_after_a_kill(toy, tmp_path):
    """`editseg segment FOLDER EXPR` killed mid-run (SIGKILL), then resumed: every record once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from editseg.bulk.folder import collect_jobs, read_records, segment_folder

    images = tmp_path / "in"
    images.mkdir()
    for i, scene in enumerate(_scenes(12)):
        Image.fromarray(scene).save(images / f"s{i:02d}.png")
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "editseg.cli", "segment", str(images), "the star", "the circle", "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    records_path = out / "records.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if records_path.is_file() and records_path.read_bytes().count(b"\n") >= 5:  # header + 2 images
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, before = read_records(records_path, repair=True)  # cuts a line the kill may have cut short
    assert 4 <= len(before) < 24
    kept = records_path.read_bytes()
    jobs = collect_jobs(str(images), ["the star", "the circle"])
    counts = segment_folder(toy, jobs, out, progress=False)
    assert counts["done_before"] == len(before) and counts["done_now"] == 24 - len(before)
    assert records_path.read_bytes().startswith(kept)  # appended, not rewritten
    _, records = read_records(records_path)
    assert sorted(r["id"] for r in records) == sorted(i for j in jobs for i, _ in j.items)
    for record in records:
        assert np.array_equal(load_mask_png(out / record["mask_file"]), decode_rle(record["mask_rle"]))
    assert not list((out / "masks").glob(".partial-*"))


def test_cli_video_and_folder_errors_come_before_loading(tmp_path, capsys):
    from editseg.cli.main import main

    assert main(["video", str(tmp_path / "missing.mp4"), "the star"]) == 2
    assert "Video not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "the star"]) == 2
    assert "No image files" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "one.png")]) == 2
    assert "expressions" in capsys.readouterr().err


def test_video_encodes_the_text_once(toy, clip, tmp_path):
    from editseg.bulk.video import segment_video, text_encoded_once

    backbone = toy.backbone
    assert backbone.text_sees_image is False
    calls = []
    original = backbone.encode_text

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    backbone.encode_text = counting
    try:
        segment_video(toy, clip, ["the star", "the circle"], tmp_path, max_frames=4, mask_video=False, overlay_video=False, progress=False)
    finally:
        del backbone.encode_text
    assert calls == [["the star", "the circle"]]  # 4 frames, one encoding
    with text_encoded_once(toy) as cache:
        toy.set_image(Image.fromarray(_scenes(1)[0]))
        cached = toy.predict(["the star"])[0]
        again = toy.predict(["the star"])[0]
        assert len(cache) == 1
    assert "encode_text" not in vars(backbone)  # restored
    assert np.array_equal(cached.mask, again.mask) and np.array_equal(cached.mask, toy.predict(["the star"])[0].mask)
