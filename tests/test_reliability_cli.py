"""Issue 13 §2, the CLI-facing items: one ``editseg: error:`` line and exit 2, before the model loads,
or a correct result. Item numbers refer to issue 13 §2."""

from __future__ import annotations

import errno
import json
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editseg import backbones
from editseg.cli.main import main


def patch_loader(monkeypatch, loader) -> None:
    """Replace ``load_backbone`` wherever editseg imported it (the CLI reaches it through methods)."""
    import editseg.api  # noqa: F401  (imports the methods, which import the loader)

    for name, module in list(sys.modules.items()):
        if name.startswith("editseg") and callable(getattr(module, "load_backbone", None)):
            monkeypatch.setattr(module, "load_backbone", loader)


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 96, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if anything tries to load a model: the error must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    patch_loader(monkeypatch, refuse)


@pytest.fixture()
def tiny_model(monkeypatch, tiny_backbone):
    patch_loader(monkeypatch, lambda *a, **k: tiny_backbone)
    return tiny_backbone


@pytest.fixture(scope="module")
def toy_backbone():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backbones.load_backbone("toy-shapes", device="cpu")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("editseg: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


# -- item 1: --out checked before loading ------------------------------------------------------------


@pytest.mark.parametrize("command", ["segment", "demo", "eval"])
def test_out_that_is_a_file_fails_before_loading(command, image_file, tmp_path, capsys, no_model_load):
    taken = tmp_path / "taken"
    taken.write_text("x")
    argv = {
        "segment": ["segment", str(image_file), "the dog", "--out", str(taken)],
        "demo": ["demo", "--out", str(taken)],
        "eval": ["eval", "--dataset", "shapes", "--limit", "2", "--out", str(taken)],
    }[command]
    assert main(argv) == 2
    assert "is an existing file" in one_error_line(capsys)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /sys, never writable")
def test_unwritable_out_fails_before_loading(image_file, capsys, no_model_load):
    assert main(["segment", str(image_file), "the dog", "--out", "/sys/editseg-unwritable/out"]) == 2
    assert "is not writable" in one_error_line(capsys)


def test_read_only_out_fails_before_loading(image_file, tmp_path, capsys, no_model_load, monkeypatch):
    def read_only(self, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert main(["segment", str(image_file), "the dog", "--out", str(tmp_path / "ro")]) == 2
    assert "Read-only file system" in one_error_line(capsys)


# -- items 2, 5, 6, 9: inputs checked before loading -------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (["--device", "banana"], "Unknown device 'banana'"),
    (["--max-pixels", "0"], "max_pixels must be at least 1"),
    (["--max-pixels", "-1"], "max_pixels must be at least 1"),
    (["--max-side", "0"], "max_side must be at least 64"),
    (["--max-side", "-5"], "max_side must be at least 64"),
    (["--max-side", "8"], "max_side must be at least 64"),
    (["--max-pixels", "1000"], "above the limit of 1,000 pixels"),
])
def test_bad_options_and_images_fail_before_loading(options, message, image_file, capsys, no_model_load):
    assert main(["segment", str(image_file), "the dog", *options]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_cpu_only_torch_fails_before_loading(image_file, capsys, no_model_load):
    assert main(["segment", str(image_file), "the dog", "--device", "cuda"]) == 2
    assert "no CUDA" in one_error_line(capsys)


def test_thin_strip_fails_before_loading(tmp_path, capsys, no_model_load):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (2000, 20)).save(strip)
    assert main(["segment", str(strip), "the dog"]) == 2
    assert "aspect ratio above 16:1" in one_error_line(capsys)


@pytest.mark.parametrize("expression, message", [("the", "stop words"), ("🐶", "emoji"), ("  ", "empty")])
def test_unusable_expressions_fail_before_loading(expression, message, image_file, capsys, no_model_load):
    assert main(["segment", str(image_file), "the dog", expression]) == 2
    assert message in one_error_line(capsys)


def test_unknown_model_lists_names_and_the_closest(image_file, capsys, monkeypatch):
    import socket

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("must not touch the network"))
    assert main(["segment", str(image_file), "the dog", "--model", "flux2-klein-4"]) == 2
    line = one_error_line(capsys)
    assert "Did you mean 'flux2-klein-4b'?" in line and "toy-shapes" in line


def test_small_image_gives_a_mask_of_its_size(tmp_path, capsys, tiny_model):
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 12), (200, 0, 0)).save(small)
    assert main(["segment", str(small), "the red square", "--out", str(tmp_path / "out")]) == 0
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert (record["width"], record["height"]) == (20, 12)


# -- item 8: the too-long error alone ----------------------------------------------------------------


def test_too_long_expression_is_one_line_without_the_tokenizer_warning(image_file, capfd, monkeypatch, toy_backbone):
    toy_backbone.pipeline.tokenizer.deprecation_warnings = {}  # transformers warns once per tokenizer
    patch_loader(monkeypatch, lambda *a, **k: toy_backbone)
    assert main(["segment", str(image_file), " ".join(["zebra"] * 40), "--out", str(image_file.parent / "o")]) == 2
    err = capfd.readouterr().err
    assert "indexing errors" not in err and "Token indices sequence length" not in err
    assert [line for line in err.splitlines() if line.startswith("editseg: error:")][0].startswith("editseg: error: Expression too long")


# -- item 13: help lists every model -----------------------------------------------------------------


def test_help_lists_every_model_that_models_lists(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in backbones.known_models():
        assert name in text, name
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in backbones.known_models())


# -- items 15, 16, 17 --------------------------------------------------------------------------------


def test_shapes_command_writes_scenes_and_a_segment_command_that_works(tmp_path, capsys, monkeypatch, toy_backbone):
    assert main(["shapes", "--out", str(tmp_path / "scenes"), "--count", "2"]) == 0
    captured = capsys.readouterr()
    lines = (tmp_path / "scenes" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[0])
    assert (tmp_path / "scenes" / entry["image"]).is_file() and (tmp_path / "scenes" / entry["mask"]).is_file()
    command = shlex.split(captured.out.strip().splitlines()[-1])
    assert command[:2] == ["editseg", "segment"]
    patch_loader(monkeypatch, lambda *a, **k: toy_backbone)
    assert main(command[1:]) == 0
    assert list((tmp_path / "scenes" / "masks-predicted").glob("*.mask.png"))
    assert main(["shapes", "--out", str(tmp_path / "x"), "--count", "0"]) == 2


def test_outputs_of_different_images_do_not_collide(tmp_path, capsys, tiny_model):
    out = tmp_path / "out"
    for name, value in (("a", 10), ("b", 240)):
        Image.new("RGB", (64, 64), (value, value, value)).save(tmp_path / f"{name}.png")
        assert main(["segment", str(tmp_path / f"{name}.png"), "the dog", "--out", str(out)]) == 0
    records = sorted(p.name for p in out.glob("*.json"))
    assert records == ["a-00-the-dog.json", "b-00-the-dog.json"]
    assert json.loads((out / "a-00-the-dog.json").read_text())["image"].endswith("a.png")


def test_photo_hint_only_where_photos_are_possible(tmp_path, capsys, monkeypatch, toy_backbone, image_file):
    patch_loader(monkeypatch, lambda *a, **k: toy_backbone)
    hint = "for photos use a real model"
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert hint not in capsys.readouterr().err
    assert main(["eval", "--dataset", "shapes", "--limit", "2", "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    assert hint not in capsys.readouterr().err
    assert main(["segment", str(image_file), "the red circle", "--out", str(tmp_path / "seg")]) == 0
    assert hint in capsys.readouterr().err


# -- item 18 through the CLI -------------------------------------------------------------------------


def test_eval_refuse_lists_unusable_samples_before_loading(tmp_path, capsys, no_model_load):
    from editseg.data.shapes import save_samples_as_manifest, shapes_benchmark

    manifest = save_samples_as_manifest(shapes_benchmark(3), tmp_path / "data")
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    lines[1]["expression"] = "the"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    argv = ["eval", "--dataset", "manifest", "--manifest", str(manifest), "--out", str(tmp_path / "ev"), "--invalid", "refuse"]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "1 of 3 samples cannot be segmented" in line and lines[1]["id"] in line
