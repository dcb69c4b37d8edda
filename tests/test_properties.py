"""Property-based: any image and any expression, through the API and the CLI, gives either a clear
error (an :class:`EditsegError` with a one-line message; exit status 2 with one ``editseg: error:``
line and no traceback) or a valid mask of the input's size (issue 13 §2, past the list).

Images: sizes from 1 px up, modes 1/L/LA/P (with and without transparency)/RGB/RGBA/I;16/I/F/CMYK,
formats PNG/JPEG/TIFF/BMP/GIF/WEBP, EXIF orientations 1-8, truncated files, arrays and PIL images.
Expressions: arbitrary unicode, emoji, CJK, stop words only, long ones past the token limit.
Example counts are small and derandomised (the same examples every run) to stay fast in CI.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from editseg.errors import EditsegError  # noqa: E402

SETTINGS = dict(
    deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)  # fmt: skip
MODES = ("1", "L", "LA", "P", "P-transparent", "RGB", "RGBA", "I;16", "I", "F", "CMYK")
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
EXIF_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
ROOT = Path(tempfile.mkdtemp(prefix="editseg-properties-"))
atexit.register(shutil.rmtree, ROOT, True)
WORDS = ("dog", "the", "red", "on", "left", "it", "a", "左边的狗", "猫", "🐶", "🔴", "ünïcødé", "car's", "2nd", "!", "…", "\u200b")


@pytest.fixture(scope="module")
def seg(tiny_backbone):
    from editseg import Segmenter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Segmenter(tiny_backbone, max_side=64)  # 16x16 tokens at most: fast


def _pixels(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    if mode in ("1", "L", "RGB", "CMYK"):
        return rgb.convert(mode)
    if mode in ("LA", "RGBA"):
        image = rgb.convert(mode)
        image.putalpha(Image.fromarray((rng.random((height, width)) * 255).astype(np.uint8)))
        return image
    if mode.startswith("P"):
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        if mode == "P-transparent":
            image.info["transparency"] = 0
        return image
    if mode == "I;16":
        return Image.fromarray((rng.random((height, width)) * 65535).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((rng.random((height, width)) * 70000).astype(np.int32))
    return Image.fromarray(rng.random((height, width)).astype(np.float32))  # "F"


@st.composite
def image_cases(draw):
    """(source, expected (H, W) or None when an error is acceptable, description)."""
    width = draw(st.one_of(st.integers(1, 63), st.integers(64, 150)))
    height = draw(st.one_of(st.integers(1, 63), st.integers(64, 150), st.just(width)))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**16))
    image = _pixels(mode, width, height, seed)
    kind = draw(st.sampled_from(("file", "file", "file", "pil", "array")))
    if kind == "pil":
        return image, (height, width), f"PIL {mode} {width}x{height}"
    if kind == "array":
        array = np.asarray(image.convert("RGBA" if "A" in mode or "transparent" in mode else "RGB"))
        return array, (height, width), f"array {array.shape}"
    fmt = draw(st.sampled_from(FORMATS))
    orientation = draw(st.integers(1, 8)) if fmt in EXIF_FORMATS else 1
    truncate = draw(st.one_of(st.none(), st.floats(0.05, 0.98)))
    buffer = io.BytesIO()
    save = {"format": fmt}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    try:
        image.save(buffer, **save)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # this format cannot store this mode: not a case
    data = buffer.getvalue()
    if truncate is not None:
        data = data[: max(1, int(len(data) * truncate))]
    path = Path(tempfile.mkdtemp(dir=ROOT)) / f"image.{fmt.lower()}"
    path.write_bytes(data)
    expected = None
    if truncate is None:
        with Image.open(path) as reopened:  # reference: what a viewer shows (EXIF applied)
            shown = ImageOps.exif_transpose(reopened)
            expected = (shown.height, shown.width)
    return path, expected, f"{fmt} {mode} {width}x{height} orientation {orientation} truncate {truncate}"


def expressions():
    return st.one_of(
        st.text(max_size=30),
        st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join),
        st.lists(st.sampled_from(WORDS), min_size=60, max_size=200).map(" ".join),  # past the 32/512-token limits
    )


def _one_line(error: BaseException) -> None:
    message = str(error)
    assert message.strip() and "\n" not in message, repr(message)


def _check_api(seg, source, expected, expression="the red dog"):
    try:
        result = seg.segment(source, expression)
    except EditsegError as error:
        _one_line(error)
        return None
    assert result.mask.dtype == np.bool_ and result.mask.ndim == 2
    if expected is not None:
        assert result.mask.shape == expected
    assert result.cam.shape == result.ram.shape == result.mask.shape
    assert np.isfinite(result.cam).all() and np.isfinite(result.ram).all()
    assert result.prompt_token_indices  # a valid result read some prompt tokens
    return result


@settings(max_examples=30, **SETTINGS)
@given(case=image_cases())
def test_api_any_image_gives_a_clear_error_or_a_mask_of_its_size(seg, case):
    source, expected, _ = case
    result = _check_api(seg, source, expected)
    if expected is not None and min(expected) >= 1 and max(expected) <= 16 * min(expected):
        assert result is not None  # a readable image of sane shape must work, whatever its mode or size


@settings(max_examples=30, **SETTINGS)
@given(expression=expressions())
def test_api_any_expression_gives_a_clear_error_or_a_mask(seg, random_image, expression):
    _check_api(seg, random_image, random_image.shape[:2], expression)


def _run_cli(argv, tiny_backbone):
    import sys

    import editseg.api  # noqa: F401  (imports the methods, which import the loader)
    from editseg.cli.main import main

    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        for name, module in list(sys.modules.items()):  # the loader is tested elsewhere
            if name.startswith("editseg") and callable(getattr(module, "load_backbone", None)):
                patch.setattr(module, "load_backbone", lambda *a, **k: tiny_backbone)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(argv)
    return code, stderr.getvalue()


def _check_cli(code, err, out_dir, expected):
    assert "Traceback" not in err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("editseg: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], err
        return
    assert code == 0, err
    records = sorted(Path(out_dir).glob("*.json"))
    assert records, err
    for path in records:
        record = json.loads(path.read_text(encoding="utf-8"))
        if expected is not None:
            assert (record["height"], record["width"]) == expected
        with Image.open(path.with_name(record["files"]["mask"])) as mask:
            assert (mask.height, mask.width) == (record["height"], record["width"])


@settings(max_examples=12, **SETTINGS)
@given(case=image_cases())
def test_cli_any_image_gives_one_error_line_or_outputs_of_its_size(tiny_backbone, case):
    source, expected, _ = case
    assume(isinstance(source, Path))
    out = Path(tempfile.mkdtemp(dir=ROOT))
    code, err = _run_cli(["segment", str(source), "the red dog", "--out", str(out), "--max-side", "64"], tiny_backbone)
    _check_cli(code, err, out, expected)


@settings(max_examples=12, **SETTINGS)
@given(expression=expressions())
def test_cli_any_expression_gives_one_error_line_or_outputs(tiny_backbone, expression):
    assume(not expression.startswith("-"))  # an option, not an expression, to argparse
    folder = Path(tempfile.mkdtemp(dir=ROOT))
    image = folder / "in.png"
    Image.fromarray(np.full((72, 96, 3), 120, np.uint8)).save(image)
    code, err = _run_cli(["segment", str(image), expression, "--out", str(folder / "out"), "--max-side", "64"], tiny_backbone)
    _check_cli(code, err, folder / "out", (72, 96))
