"""The command line and model loading: outputs on disk, clear errors, real from_pretrained path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones import load_backbone
from editseg.cli.main import main
from editseg.errors import ModelNotFoundError, UnsupportedModelError
from editseg.masks import decode_rle, load_mask_png


@pytest.fixture()
def image_file(tmp_path, random_image):
    path = tmp_path / "photo.png"
    Image.fromarray(random_image).save(path)
    return path


def test_segment_writes_mask_overlay_heatmaps_and_json(image_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(image_file), "the red circle", "a dog", "--out", str(out), "--tau", "0.7"])
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        f"{stem}.{kind}" for stem in ("photo-00-the-red-circle", "photo-01-a-dog") for kind in ("mask.png", "overlay.png", "cam.png", "ram.png", "json")
    )
    record = json.loads((out / "photo-00-the-red-circle.json").read_text())
    assert record["instruction"] == "remove the red circle" and record["settings"]["tau"] == 0.7
    mask = load_mask_png(out / "photo-00-the-red-circle.mask.png")
    assert mask.shape == (64, 80)
    np.testing.assert_array_equal(decode_rle(record["mask_rle"]), mask)
    assert record["mask_area"] == int(mask.sum())
    assert "toy-shapes is a tiny editor trained on synthetic" in capsys.readouterr().err  # the default model says what it is


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "missing.png", "dog"], "Image not found"),
        (["segment", "{image}", "  "], "empty"),
        (["segment", "{image}", "dog", "--tau", "1.5"], "tau"),
        (["segment", "{image}", "dog", "--attention-blocks", "x-y"], "block selection"),
        (["segment", "{image}", "dog", "--model", "./no/such/folder"], "Model folder not found"),
        (["segment", "{image}", "dog", "--model", "{sd_folder}"], "does not support"),
        (["segment", "{image}", "dog", "--model", "step1x-edit"], "Could not load model"),
    ],
)
def test_cli_errors_are_messages_not_tracebacks(image_file, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sd_folder = tmp_path / "sd"
    sd_folder.mkdir()
    (sd_folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    argv = [a.replace("{image}", str(image_file)).replace("{sd_folder}", str(sd_folder)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--offload", "--mode", "--attention-blocks", "--feature-site", "--feature-block", "--tau",
                 "--prompt-tokens", "--template", "--similarity", "--seed", "--batch-size", "--max-side", "--dtype"):
        assert flag in text


def test_hub_id_without_weights_names_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_backbone("flux2-klein-4b", device="cpu")
    text = str(info.value)
    assert "black-forest-labs/FLUX.2-klein-4B" in text and "EDITSEG_MODELS_DIR" in text and "HF_HUB_OFFLINE" in text


def test_kv_variant_is_refused(tmp_path):
    folder = tmp_path / "FLUX.2-klein-9b-kv"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinKVPipeline"}))
    with pytest.raises(UnsupportedModelError, match="attend only to"):
        load_backbone(str(folder), device="cpu")


def test_local_folder_loads_through_from_pretrained(tiny_pipeline, tmp_path, random_image, monkeypatch):
    """The real loading path: save a tiny pipeline, load it by folder and via EDITSEG_MODELS_DIR."""
    from editseg import Segmenter

    folder = tmp_path / "models" / "FLUX.2-klein-tiny"
    tiny_pipeline.save_pretrained(folder)
    backbone = load_backbone(str(folder), device="cpu", dtype=torch.float32)
    assert not backbone.is_random and backbone.num_blocks == 5
    reference = Segmenter(load_backbone("tiny-random-flux2", device="cpu"), max_side=None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference.segment(random_image, "the cat").ram_tokens
    np.testing.assert_allclose(Segmenter(backbone).segment(random_image, "the cat").ram_tokens, expected, atol=1e-5)
    monkeypatch.setenv("EDITSEG_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_backbone("someorg/FLUX.2-klein-tiny", device="cpu").num_blocks == 5


def test_demo_writes_one_row_per_object_with_unique_expressions(tmp_path, capsys):
    from editseg.data import shapes_grammar
    from editseg.cli.demo import demo_expressions, demo_scene

    scene = demo_scene(64)
    pairs = demo_expressions(scene)
    assert len(pairs) == len(scene.objects) >= 3  # 3-4 expressions on the basic scene
    for target, (expression, truth) in enumerate(pairs):
        assert shapes_grammar.resolve(scene.objects, shapes_grammar.parse_expression(expression)) == [target]
        np.testing.assert_array_equal(truth, scene.object_masks[target])
    assert main(["demo", "--out", str(tmp_path)]) == 0
    picture = Image.open(tmp_path / "demo.png")
    assert picture.width > 6 * 160 and picture.height >= len(pairs) * 160  # 6 panels: + the model's edit


def test_demo_edit_column_uses_the_segmenters_input_geometry(tiny_backbone, tmp_path, monkeypatch):
    """The model's-edit panel is computed on the same prepared image as the masks (same max_side)."""
    from editseg import Segmenter
    from editseg.cli.demo import run_demo

    seen = []
    original = type(tiny_backbone).prepare_image

    def recording(self, image, max_side=None):
        seen.append(max_side)
        return original(self, image, max_side=max_side)

    monkeypatch.setattr(type(tiny_backbone), "prepare_image", recording)
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        segmenter = Segmenter(tiny_backbone, max_side=96)
    assert run_demo(segmenter, tmp_path).is_file()
    assert len(seen) == 4 and set(seen) == {96}  # two scenes: masks and edit panel each
