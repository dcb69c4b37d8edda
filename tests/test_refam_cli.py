"""RefAM end to end through ``editseg segment`` and ``editseg eval`` on tiny random models
(FLUX.1 FluxPipeline + SAM built in-process, no downloads)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from editseg.cli.main import main
from editseg.data.shapes import save_samples_as_manifest, shapes_benchmark
from editseg.methods.registry import METHODS, method_class


def test_registered():
    spec = METHODS["refam"]
    assert spec.requires == ("t2i-dit", "sam") and spec.default_model == "flux1-dev"
    cls = method_class("refam")
    assert cls.name == "refam" and cls.requires == spec.requires


def test_segment_cli(tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out"
    code = main(["segment", str(image), "the man on the left", "--method", "refam", "--model", "tiny-random-flux1",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with Image.open(next(out.rglob("*mask*.png"))) as mask:
        assert mask.size == (56, 40)
    [record_path] = out.rglob("*.json")
    record = json.loads(record_path.read_text())
    assert record["instruction"] == "the man on the left _ with to and pink"


def test_eval_cli(tmp_path, capsys):
    manifest = save_samples_as_manifest(shapes_benchmark(2), tmp_path / "shapes")
    out = tmp_path / "run"
    code = main(["eval", "--dataset", "manifest", "--manifest", str(manifest), "--method", "refam",
                 "--model", "tiny-random-flux1", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in next(out.rglob("records*.jsonl")).read_text().splitlines()]
    samples = [r for r in records if "iou" in r]
    assert len(samples) == 2 and all(0 <= r["iou"] <= 1 for r in samples)


def test_method_options(tmp_path, capsys):
    from editseg.cli.options import parse_method_options

    assert parse_method_options(["inversion=true", "timestep=700", "magnets=[\"with\"]", "parser=rules", "mask-choice=largest"]) == {
        "inversion": True, "timestep": 700, "magnets": ("with",), "parser": "rules", "mask_choice": "largest"}
    image = tmp_path / "image.png"
    Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "out"
    code = main(["segment", str(image), "dog", "--method", "refam", "--model", "tiny-random-flux1", "--device", "cpu",
                 "--method-option", "inversion=true", "--method-option", "inversion_gamma=0",
                 "--method-option", "magnets=[\"with\"]", "--method-option", "color_magnets=[]", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    record = json.loads(next(out.rglob("*.json")).read_text())
    assert record["instruction"] == "dog with" and record["settings"]["inversion"] is True
    code = main(["segment", str(image), "dog", "--method", "refam", "--model", "tiny-random-flux1", "--device", "cpu",
                 "--method-option", "magnet=pink", "--out", str(out)])
    assert code != 0 and "Unknown RefAM option" in capsys.readouterr().err
