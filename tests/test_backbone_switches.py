"""Backbone switches (``Backbone.switches``): typed validation, all-or-nothing setting, the value
reaching the model, ``--backbone-option`` on the command line, and eval records tied to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from editseg.backbones.switches import Switch
from editseg.cli.main import main
from editseg.errors import ConfigError


@pytest.fixture(scope="module")
def step1x():
    from editseg.backbones.step1x import Step1XEditBackbone
    from editseg.backbones.step1x.tiny import build_tiny_step1x_pipeline

    return Step1XEditBackbone(build_tiny_step1x_pipeline(seed=0), name="tiny-step1x", is_random=True)


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray((np.random.default_rng(5).random((48, 64, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("switch", "value", "expected"),
    [
        (Switch(bool, True, ""), "false", False),
        (Switch(bool, True, ""), "On", True),
        (Switch(bool, False, ""), True, True),
        (Switch(int, 0, ""), "-3", -3),
        (Switch(int, 0, ""), 7, 7),
        (Switch(str, "a", "", ("a", "b")), "b", "b"),
    ],
)
def test_values_are_coerced_to_the_declared_type(switch, value, expected):
    result = switch.coerce("x", value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("switch", "value", "message"),
    [
        (Switch(bool, True, ""), "maybe", "takes a bool"),
        (Switch(int, 0, ""), "1.5", "takes a int"),
        (Switch(int, 0, ""), True, "takes a int"),  # a bool is not an int here
        (Switch(str, "a", "", ("a", "b")), "c", "one of a, b"),
        (Switch(str, "a", "", ("a", "b")), 3, "takes a str"),
    ],
)
def test_bad_values_are_clear_errors(switch, value, message):
    with pytest.raises(ConfigError, match=message):
        switch.coerce("x", value)


def test_unknown_names_list_the_switches_and_nothing_is_set_on_an_error(step1x):
    with pytest.raises(ConfigError, match=r"no backbone switch 'nope'.*vae_latent \(mean\|sample, default 'mean'\)"):
        step1x.set_switches({"vae_seed": 4, "nope": 1})
    with pytest.raises(ConfigError, match="one of mean, sample"):
        step1x.set_switches({"vae_seed": 4, "vae_latent": "median"})
    assert step1x.vae_seed == 0 and step1x.changed_switches() == {}


def test_a_switch_set_by_name_reaches_the_model(step1x, photo):
    step1x.set_switches({"vae_latent": "sample", "vae_seed": "5"})
    try:
        assert step1x.changed_switches() == {"vae_latent": "sample", "vae_seed": 5}
        switched = step1x.prepare_image(photo).tensors["latents"]
    finally:
        step1x.set_switches({"vae_latent": "mean", "vae_seed": 0})
    step1x.vae_latent, step1x.vae_seed = "sample", 5  # the same, set as plain attributes
    try:
        direct = step1x.prepare_image(photo).tensors["latents"]
    finally:
        step1x.vae_latent, step1x.vae_seed = "mean", 0
    assert torch.equal(switched, direct)
    assert not torch.allclose(step1x.prepare_image(photo).tensors["latents"], switched)


def test_eval_settings_carry_changed_switches_only(step1x):
    from editseg import Segmenter
    from editseg.evaluation.records import SettingsMismatchError, compare_settings
    from editseg.evaluation.runner import run_settings

    segmenter = Segmenter(step1x)
    default = run_settings(segmenter, [])
    assert "backbone_switches" not in default  # older records files (no switches) still resume
    step1x.set_switches({"mrope": False})
    try:
        switched = run_settings(segmenter, [])
    finally:
        step1x.set_switches({"mrope": True})
    assert switched["backbone_switches"] == {"mrope": False}
    with pytest.raises(SettingsMismatchError, match="backbone_switches"):
        compare_settings(switched, default, "records.jsonl")


@pytest.fixture()
def image_path(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_sets_switches_and_records_them(image_path, tmp_path):
    out = tmp_path / "out"
    code = main(["segment", str(image_path), "the dog", "--model", "tiny-random-step1x", "--out", str(out),
                 "--backbone-option", "vae_latent=sample", "--backbone-option", "vae_seed=2",
                 "--backbone-option", "mrope=false"])  # fmt: skip
    assert code == 0
    [record_path] = out.glob("*.json")
    settings = json.loads(record_path.read_text())["settings"]
    assert settings["backbone_switches"] == {"vae_latent": "sample", "vae_seed": 2, "mrope": False}


@pytest.mark.parametrize(
    ("model", "option", "message"),
    [
        ("tiny-random-step1x", "nope=1", "no backbone switch 'nope'. Its switches: vae_latent"),
        ("tiny-random-step1x", "vae_latent=median", "one of mean, sample"),
        ("tiny-random-flux2", "mrope=false", "has no switches"),
        ("tiny-random-flux2", "mrope", "--backbone-option takes KEY=VALUE"),
    ],
)
def test_cli_switch_errors_are_one_line_exit_2(model, option, message, image_path, tmp_path, capsys):
    code = main(["segment", str(image_path), "the dog", "--model", model, "--out", str(tmp_path / "o"),
                 "--backbone-option", option])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.glob("o/*.json"))  # refused before anything is written
