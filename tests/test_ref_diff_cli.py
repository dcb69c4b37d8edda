"""Ref-Diff end to end through ``editseg segment`` and ``editseg eval`` on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from editseg.cli.main import main
from editseg.data.shapes import save_samples_as_manifest, shapes_benchmark
from editseg.methods.registry import METHODS, method_class


def test_registered():
    spec = METHODS["ref-diff"]
    assert spec.requires == ("unet", "sam", "clip") and spec.default_model == "sd15"
    assert method_class("ref-diff").name == "ref-diff"


def test_segment_cli(tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out"
    code = main(["segment", str(image), "the man on the left", "--method", "ref-diff", "--model", "tiny-random-sd15",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.rglob("*"))
    assert any(name.endswith(".png") for name in written), written
    with Image.open(next(out.rglob("*mask*.png"))) as mask:
        assert mask.size == (56, 40)


def test_eval_cli(tmp_path, capsys):
    manifest = save_samples_as_manifest(shapes_benchmark(2), tmp_path / "shapes")
    out = tmp_path / "run"
    code = main(["eval", "--dataset", "manifest", "--manifest", str(manifest), "--method", "ref-diff",
                 "--model", "tiny-random-sd15", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 2 and summary["settings"]["method"] == "ref-diff"
    assert summary["settings"]["model"] == "tiny-random-sd15" and summary["settings"]["config"]["alpha"] == 0.1
    assert "editseg ref-diff" in (out / "table.md").read_text()
