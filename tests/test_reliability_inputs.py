"""Issue 13 §2, the items outside the CLI: every bad input is one clear error or a correct result.

Item numbers refer to issue 13 §2.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import signal
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from editseg.errors import ConfigError, EditsegError, ExpressionError, ImageLoadError, UnsafeFileError, UnsupportedModelError
from editseg.geometry import ImageGeometry
from editseg.images import DEFAULT_MAX_PIXELS, load_image, validate_max_pixels, validate_max_side
from editseg.text import count_tokens, normalize_expression


# -- item 6: max_pixels / max_side ------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [(0, "at least 1"), (-1, "at least 1"), (2.5, "whole number"), (True, "whole number")])
def test_max_pixels_out_of_range_is_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        validate_max_pixels(value)
    with pytest.raises(ConfigError, match=message):
        load_image(np.zeros((4, 4, 3), np.uint8), max_pixels=value)


@pytest.mark.parametrize("value", [0, -5, 8, 63])
def test_max_side_below_the_models_minimum_is_refused_not_clamped(value, tiny_backbone):
    from editseg import Segmenter

    with pytest.raises(ConfigError, match="max_side must be at least 64"):
        validate_max_side(value)
    with pytest.raises(ConfigError, match="max_side"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Segmenter(tiny_backbone, max_side=value)
    assert validate_max_side(None) is None and validate_max_side(64) == 64


# -- item 11: large images ---------------------------------------------------------------------------


def test_default_limit_is_50_mp_and_the_error_states_it_before_decoding(tmp_path):
    assert DEFAULT_MAX_PIXELS == 50_000_000
    path = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)  # 100 MP, 1 bit per pixel: cheap to write
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "10000x10000" in str(info.value) and "limit of 50,000,000 pixels" in str(info.value)
    assert "--reduce-large" in str(info.value) and "\n" not in str(info.value)


def test_oversize_jpeg_is_decoded_reduced_through_draft(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jpg"
    Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)).save(path)
    from PIL import JpegImagePlugin

    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording(self, mode, size):
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    image = load_image(path, max_pixels=40_000, reduce_oversize=True)
    assert image.size == (200, 150) and drafts == [(200, 150)]  # decoded at 1/2 scale by the JPEG decoder
    with pytest.raises(ImageLoadError, match="limit of 40,000 pixels"):
        load_image(path, max_pixels=40_000)


def test_oversize_png_is_reduced_by_a_power_of_two(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300), (10, 20, 30)).save(path)
    image = load_image(path, max_pixels=10_000, reduce_oversize=True)
    assert image.size == (100, 75) and image.getpixel((5, 5)) == (10, 20, 30)


def test_separable_upsampling_equals_grid_sample_on_random_geometries():
    """The bounded-memory resampling against the naive transcription (grid_sample on the full grid)."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(1, 200, 2))
        resized_w, resized_h = (int(v) for v in rng.integers(16, 160, 2))
        patch = int(rng.integers(1, 9))
        crop_w, crop_h = resized_w // patch * patch, resized_h // patch * patch
        geometry = ImageGeometry((width, height), (resized_w, resized_h), ((resized_w - crop_w) // 2, (resized_h - crop_h) // 2, crop_w, crop_h), patch)
        maps = torch.rand(2, *geometry.grid)
        grid = geometry.sampling_grid().expand(2, -1, -1, -1)
        expected = F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
        torch.testing.assert_close(geometry.to_input(maps), expected, atol=2e-5, rtol=0)


# -- items 4, 7, 8: expressions ----------------------------------------------------------------------


@pytest.mark.parametrize("expression, message", [
    ("the", "only of stop words"), ("this one", "only of stop words"), ("  it  ", "only of stop words"),
    ("🐶🐱", "emoji"), ("🐶 !", "emoji"), ("?!…", "punctuation"), ("", "empty"),
])
def test_unusable_expressions_are_named_for_what_they_are(expression, message):
    with pytest.raises(ExpressionError, match=message):
        normalize_expression(expression)


@pytest.mark.parametrize("expression", ["the dog", "左边的狗", "the 🐶 on the left", "éclair", "the one on the left", "2nd car"])
def test_expressions_with_a_content_word_pass(expression):
    assert normalize_expression(expression) == expression


def test_cjk_prompt_tokens_show_each_character_once(tiny_backbone):
    prompt = tiny_backbone.encode_text(["左边的狗"], ["remove 左边的狗"]).prompts[0]
    indices = prompt.indices("expression")
    assert len(indices) > 4  # the tiny byte-level tokenizer splits each character into several tokens
    assert "".join(prompt.token_strings(indices)) == "左边的狗"
    latin = tiny_backbone.encode_text(["the red dog"], ["remove the red dog"]).prompts[0]
    assert "".join(latin.token_strings(latin.indices("expression"))).split() == ["the", "red", "dog"]


def test_stop_word_only_expression_is_refused_by_the_api(segmenter, random_image):
    segmenter.set_image(random_image)
    with pytest.raises(ExpressionError, match="stop words"):
        segmenter.predict(["the dog", "the"])


def test_token_count_emits_no_indexing_errors_warning(tiny_backbone, capfd, caplog):
    tokenizer = copy.deepcopy(tiny_backbone.pipeline.tokenizer)
    tokenizer.deprecation_warnings = {}  # transformers warns once per tokenizer: start fresh
    tokenizer.model_max_length = 64  # as a real checkpoint declares (the tiny one declares none)
    long_text = " ".join(["zebra"] * 2000)
    assert count_tokens(tokenizer, [long_text])[0] > tokenizer.model_max_length
    captured = capfd.readouterr()
    assert "indexing errors" not in captured.err + captured.out + caplog.text
    tokenizer.deprecation_warnings = {}
    tokenizer([long_text])  # the check is meaningful: plain tokenisation does warn
    captured = capfd.readouterr()
    assert "indexing errors" in captured.err + captured.out + caplog.text


def test_expression_problems_checks_a_dataset_without_a_forward(segmenter, monkeypatch):
    monkeypatch.setattr(type(segmenter.backbone), "probe_forward", lambda *a, **k: pytest.fail("no forward"))
    monkeypatch.setattr(type(segmenter.backbone), "encode_text", lambda *a, **k: pytest.fail("no encoder"))
    long = " ".join(["zebra"] * 600)
    problems = segmenter.expression_problems(["the dog", "the", "🐶", long])
    assert set(problems) == {"the", "🐶", long}
    assert "too long" in problems[long] and "stop words" in problems["the"] and "emoji" in problems["🐶"]


# -- item 14: predict vs segment ---------------------------------------------------------------------


def test_predict_always_returns_a_list_and_segment_mirrors_its_input(segmenter, random_image):
    from editseg.api import SegmentationResult

    single = segmenter.segment(random_image, "the dog")
    assert isinstance(single, SegmentationResult)
    assert isinstance(segmenter.segment(random_image, ["the dog"]), list)
    listed = segmenter.predict("the dog")
    assert isinstance(listed, list) and len(listed) == 1
    np.testing.assert_array_equal(listed[0].mask, single.mask)


# -- item 2: devices ---------------------------------------------------------------------------------


def test_unknown_devices_are_config_errors():
    from editseg.backbones import resolve_device

    with pytest.raises(ConfigError, match="Unknown device 'banana'"):
        resolve_device("banana")
    with pytest.raises(ConfigError, match="cpu, cuda or mps"):
        resolve_device("meta")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_torch_is_a_config_error():
    from editseg.backbones import load_backbone, resolve_device

    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA"):
        load_backbone("tiny-random-flux2", device="cuda:0")


# -- item 5: unknown model names ---------------------------------------------------------------------


def test_unknown_model_name_lists_known_names_and_the_closest_without_network(monkeypatch):
    import socket

    from editseg.backbones import flux2, load_backbone

    monkeypatch.setattr(flux2, "load_pipeline", lambda *a, **k: pytest.fail("must not try to load"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("must not touch the network"))
    with pytest.raises(UnsupportedModelError) as info:
        load_backbone("flux2-klein-4", device="cpu")
    text = str(info.value)
    assert "Did you mean 'flux2-klein-4b'?" in text and "toy-shapes" in text and "qwen-image-edit" in text
    assert "stacktrace" not in text and "\n" not in text
    with pytest.raises(UnsupportedModelError, match="Unknown model 'banana'") as info:
        load_backbone("banana", device="cpu")
    assert "Did you mean" not in str(info.value)


# -- item 10: atomic writes --------------------------------------------------------------------------


def _result(segmenter, random_image):
    return segmenter.segment(random_image, "the dog")


def test_interrupted_write_leaves_no_partial_expression(segmenter, random_image, tmp_path, monkeypatch):
    from editseg.cli import writers

    result = _result(segmenter, random_image)
    image = Image.fromarray(random_image)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers, "heatmap", interrupted)  # Ctrl-C after the mask PNG was written
    with pytest.raises(KeyboardInterrupt):
        writers.write_result(result, image, tmp_path, "00-dog")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_renames_is_delivered_after_all_files_are_in_place(segmenter, random_image, tmp_path, monkeypatch):
    from editseg.cli import writers

    result = _result(segmenter, random_image)
    real_replace = os.replace
    calls = []

    def replace_with_signal(source, target):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives after the first rename
        calls.append(target)
        real_replace(source, target)

    monkeypatch.setattr(writers.os, "replace", replace_with_signal)
    with pytest.raises(KeyboardInterrupt):
        writers.write_result(result, Image.fromarray(random_image), tmp_path, "00-dog")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"00-dog.{k}" for k in ("mask.png", "overlay.png", "cam.png", "ram.png", "json"))
    assert json.loads((tmp_path / "00-dog.json").read_text())["expression"] == "the dog"


# -- item 12: JSON field names -----------------------------------------------------------------------


def test_json_names_image_size_plainly_and_rle_size_is_coco_height_width(segmenter, tmp_path):
    from editseg.masks import decode_rle
    from editseg.cli.writers import result_record

    image = np.zeros((72, 120, 3), np.uint8)  # wide: width 120, height 72
    record = result_record(segmenter.segment(image, "the dog"))
    assert "size" not in record
    assert (record["width"], record["height"]) == (120, 72)
    assert record["mask_rle"]["size"] == [72, 120]
    assert decode_rle(record["mask_rle"]).shape == (72, 120)


# -- item 19: what editseg loads ---------------------------------------------------------------------


class _Payload:
    """Pickles to a call of os.system: what a crafted refs file or checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_refs_pickle_runs_no_code(tmp_path):
    from editseg.data.refer import load_data_pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"split": "val", "sentences": [_Payload(marker)]}]))
    with pytest.raises(UnsafeFileError, match="posix.system|os.system|nt.system") as info:
        load_data_pickle(path)
    assert not marker.exists() and "\n" not in str(info.value)
    with open(path, "rb") as handle:  # the payload is real: a plain pickle.load runs it
        pickle.load(handle)
    assert marker.exists()


def test_plain_refs_pickles_load_including_python2_latin1(tmp_path):
    from editseg.data.refer import load_data_pickle

    refs = [{"ref_id": 1, "split": "val", "sentences": [{"sent": "left dog", "tokens": ["left", "dog"]}], "box": (1.0, 2.5), "tags": {3, 4}, "n": None}]
    for protocol in (0, 1, 2, 3, 4, 5):
        path = tmp_path / f"refs{protocol}.p"
        path.write_bytes(pickle.dumps(refs, protocol=protocol))
        assert load_data_pickle(path) == refs
    py2 = tmp_path / "py2.p"  # a Python 2 str with a non-ASCII byte (protocol 2, SHORT_BINSTRING)
    py2.write_bytes(b"\x80\x02]q\x00U\x04caf\xe9q\x01a.")
    assert load_data_pickle(py2) == ["café"]
    broken = tmp_path / "cut.p"
    broken.write_bytes(pickle.dumps(refs)[:20])
    with pytest.raises(UnsafeFileError, match="truncated or corrupt|not a readable"):
        load_data_pickle(broken)


def test_refcoco_dataset_with_a_crafted_refs_file_is_one_error(tmp_path):
    from editseg.data.refer import RefCOCODataset

    marker = tmp_path / "pwned"
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Payload(marker)]))
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(EditsegError, match="not a plain-data pickle"):
        RefCOCODataset(tmp_path, "refcoco", "val").samples
    assert not marker.exists()


def test_checkpoints_load_weights_only_optimizer_state_included(tmp_path):
    from editseg.toy.train import load_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"transformer": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7, "elapsed_s": 1.5,
             "config": {"model": {"width": 8}, "lr": 0.1, "name": "x"}}
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    restored.load_state_dict(loaded["optimizer"])
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])

    marker = tmp_path / "pwned"
    torch.save({"transformer": model.state_dict(), "step": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="not a plain checkpoint") as info:
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists() and "\n" not in str(info.value)


_PEAK_SCRIPT = """
import resource, warnings, numpy as np
warnings.simplefilter("ignore")
from editseg import Segmenter
seg = Segmenter.from_pretrained("toy-shapes", device="cpu")
image = np.zeros((4000, 4000, 3), np.uint8); image[:2000] = 200
seg.segment(np.zeros((64, 64, 3), np.uint8), "the red circle")  # warm up allocators and lazy imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = seg.segment(image, ["the red circle", "the blue square"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kept = sum(r.cam.nbytes + r.ram.nbytes + r.mask.nbytes for r in results)
print((peak - before) * 1024 - kept)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
def test_peak_memory_beyond_the_results_stays_small_on_a_16_mp_image():
    """Item 11: beyond what the results hold (float32 CAM/RAM + mask per expression at input size),
    a 16 MP image costs about one RGB copy (48 MB); the grid_sample path cost ~145 MB more."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "src")
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    overhead = int(done.stdout.strip().splitlines()[-1])
    assert overhead < 100 * 2**20, f"{overhead / 2**20:.0f} MB beyond the results"
