"""Robust image input: modes, bit depths, alpha, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from editseg.errors import ImageLoadError
from editseg.images import load_image


def test_grayscale_alpha_palette_and_16_bit_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((10, 12), 100, np.uint8))
    assert np.all(np.asarray(load_image(gray)) == 100)

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top opaque red, bottom transparent → composited onto white
    out = np.asarray(load_image(rgba))
    assert out.shape == (10, 12, 3)
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[9, 0]) == (255, 255, 255)

    sixteen = np.full((8, 8), 65535, np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(sixteen).save(path)
    assert np.all(np.asarray(load_image(path)) == 255)

    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P")
    assert load_image(palette).mode == "RGB"

    floats = np.full((3, 6, 7), 0.5, np.float32)  # CHW floats in [0, 1]
    assert np.asarray(load_image(floats)).shape == (6, 7, 3)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (10, 20)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"definitely not an image")
    with pytest.raises(ImageLoadError, match="Cannot read"):
        load_image(junk)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="Cannot read"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((5, 6, 2), np.uint8))
    with pytest.raises(ImageLoadError):
        load_image(12345)
