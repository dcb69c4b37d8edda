"""Reading user images robustly: any path, PIL image or array becomes an RGB ``PIL.Image``.

Grayscale, palette, 16-bit and float images are converted; alpha is composited onto white
(``ALPHA_BACKGROUND``); EXIF orientation is applied so masks line up with what viewers show.

**Size limit.** Images above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, 50 MP: a 48 MP
phone photo passes) are refused before their pixels are decoded, and the error states the limit.
Masks and CAM/RAM maps are returned at the input resolution (float32 maps: 8 bytes per pixel per
expression), so the limit is what bounds peak memory; raise it knowingly. With
``reduce_oversize=True`` such an image is instead decoded reduced by a power of two until it fits:
JPEG decodes directly at 1/2, 1/4 or 1/8 scale (``Image.draft``, the full-size pixels never exist);
other formats decode once and shrink with ``Image.reduce``, up to :data:`REDUCE_DECODE_LIMIT`
times the limit. Results are then at the reduced size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageLoadError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

ALPHA_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = 50_000_000
"""Default pixel limit (50 MP; 8192 x 6104). PIL's own bomb limit (179 MP) let a 100 MP image reach
11 GB of peak memory with the tiny default model."""
REDUCE_DECODE_LIMIT = 16
"""With ``reduce_oversize``, formats without reduced decoding are decoded in full only up to this
many times ``max_pixels`` (then shrunk); larger ones are refused."""
MAX_ASPECT_RATIO = 16
"""Longest side over shortest side accepted: models resize to a fixed area with a minimum side, so
thinner strips cannot be represented (checked when the image is read, before any model loads)."""
MIN_MAX_SIDE = 64
"""The smallest ``max_side`` accepted: every backbone needs at least 64 px on the short side."""


def validate_max_pixels(max_pixels: object) -> int:
    """``max_pixels`` as a positive int, or :class:`ConfigError` saying what is wrong."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise ConfigError(f"max_pixels must be a whole number of pixels, got {max_pixels!r}.")
    if max_pixels < 1:
        raise ConfigError(
            f"max_pixels must be at least 1, got {max_pixels} (default {DEFAULT_MAX_PIXELS:,}; "
            "it bounds the input size, and so peak memory)."
        )
    return int(max_pixels)


def validate_max_side(max_side: object) -> int | None:
    """``max_side`` as ``None`` or an int of at least :data:`MIN_MAX_SIDE`, else :class:`ConfigError`."""
    if max_side is None:
        return None
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)):
        raise ConfigError(f"max_side must be a whole number of pixels, got {max_side!r}.")
    if max_side < MIN_MAX_SIDE:
        raise ConfigError(
            f"max_side must be at least {MIN_MAX_SIDE} (models need {MIN_MAX_SIDE} px on the short side), "
            f"got {max_side}; leave it unset for the model's own input size."
        )
    return int(max_side)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to uint8 (16-bit by 257, floats in [0, 1] by 255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        maximum = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(array.astype(np.float64) * (255.0 / maximum), 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError("Image array contains NaN or infinite values.")
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(array * scale, 0, 255).round().astype(np.uint8)
    raise ImageLoadError(f"Unsupported image array dtype {array.dtype}.")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"Image array has shape {array.shape}; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    array = _to_uint8(np.ascontiguousarray(array))
    if array.ndim == 2:
        return Image.fromarray(array).convert("L")
    return Image.fromarray(array).convert("RGB" if array.shape[-1] == 3 else "RGBA")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency onto ``ALPHA_BACKGROUND``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _pil_to_rgb(_array_to_pil(np.asarray(image)))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(
    source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_oversize: bool = False
) -> Image.Image:
    """Return ``source`` as an RGB PIL image, or raise :class:`ImageLoadError` saying why not.

    ``source`` may be a path, a PIL image or an array (H,W), (H,W,3), (H,W,4) or (C,H,W) of
    uint8, uint16, bool or float in [0, 1]. Images above ``max_pixels`` are refused (they are
    usually a mistake and would exhaust memory), or with ``reduce_oversize=True`` decoded reduced
    by a power of two until they fit (see the module docstring).
    """
    max_pixels = validate_max_pixels(max_pixels)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_pil(source)
    elif isinstance(source, (str, os.PathLike)):
        image = _open_file(Path(source).expanduser(), max_pixels, reduce_oversize)
    else:
        raise ImageLoadError(
            f"Unsupported image input of type {type(source).__name__}; pass a path, PIL image or numpy array."
        )
    if image.width < 1 or image.height < 1:
        raise ImageLoadError("Image is empty (zero width or height).")
    if reduce_oversize and image.width * image.height > max_pixels:
        image = _reduce(image, max_pixels)
    _check_size(image.size, max_pixels, "image")
    if max(image.size) > MAX_ASPECT_RATIO * min(image.size):
        raise ImageLoadError(
            f"image is {image.width}x{image.height}: an aspect ratio above {MAX_ASPECT_RATIO}:1, which the models "
            "cannot take (they need a minimum side at a fixed area); crop it to the region of interest."
        )
    try:
        return _pil_to_rgb(image)
    except (OSError, ValueError) as error:
        raise ImageLoadError(f"Cannot convert the image (mode {image.mode}) to RGB: {error}") from None


def _reduction(size: tuple[int, int], max_pixels: int) -> int:
    """The smallest power-of-two factor that brings ``size`` within ``max_pixels``."""
    factor = 1
    while math.ceil(size[0] / factor) * math.ceil(size[1] / factor) > max_pixels:
        factor *= 2
    return factor


def _reduce(image: Image.Image, max_pixels: int) -> Image.Image:
    factor = _reduction(image.size, max_pixels)
    if factor == 1:
        return image
    if min(image.size) < factor:
        raise ImageLoadError(
            f"image is {image.width}x{image.height}: too thin to reduce under the limit of {max_pixels:,} pixels."
        )
    return image.reduce(factor)


def _open_file(path: Path, max_pixels: int, reduce_oversize: bool) -> Image.Image:
    if not path.exists():
        raise ImageLoadError(f"Image not found: {path}")
    if path.is_dir():
        raise ImageLoadError(f"Expected an image file but got a folder: {path}")
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clearer message
    try:
        image = Image.open(path)
        width, height = image.size
        if reduce_oversize and width * height > max_pixels:
            if width * height > REDUCE_DECODE_LIMIT * max_pixels and image.format != "JPEG":
                _check_size(image.size, max_pixels, str(path))
            factor = _reduction(image.size, max_pixels)
            if image.format == "JPEG" and factor > 1:  # decode at 1/2, 1/4 or 1/8 scale directly
                image.draft(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        else:
            _check_size(image.size, max_pixels, str(path))
        image.load()
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"Cannot read {path}: not an image format Pillow understands (or the file is corrupt)."
        ) from None
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"Cannot read {path}: the file is truncated or corrupt ({error}).") from None
    except MemoryError:
        raise ImageLoadError(f"Cannot read {path}: not enough memory to decode it; downscale it first.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not make a readable image unusable
        pass
    return image


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} pixels. "
            "Downscale it first, decode it reduced (--reduce-large / reduce_oversize=True), or raise the "
            "limit (--max-pixels / max_pixels=...)."
        )
