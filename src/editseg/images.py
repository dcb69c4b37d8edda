"""Reading user images robustly: any path, PIL image or array becomes an RGB ``PIL.Image``.

Grayscale, palette, 16-bit and float images are converted; alpha is composited onto white
(``ALPHA_BACKGROUND``); EXIF orientation is applied so masks line up with what viewers show.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

ALPHA_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit (2 * 89,478,485)


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


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return ``source`` as an RGB PIL image, or raise :class:`ImageLoadError` saying why not.

    ``source`` may be a path, a PIL image or an array (H,W), (H,W,3), (H,W,4) or (C,H,W) of
    uint8, uint16, bool or float in [0, 1]. Images above ``max_pixels`` are refused (they are
    usually a mistake and would exhaust memory); pass a larger limit to allow them.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _array_to_pil(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise ImageLoadError(f"Image not found: {path}")
        if path.is_dir():
            raise ImageLoadError(f"Expected an image file but got a folder: {path}")
        previous_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clearer message
        try:
            image = Image.open(path)
            _check_size(image.size, max_pixels, str(path))
            image.load()
        except UnidentifiedImageError:
            raise ImageLoadError(
                f"Cannot read {path}: not an image format Pillow understands (or the file is corrupt)."
            ) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(f"Cannot read {path}: the file is truncated or corrupt ({error}).") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # broken EXIF must not make a readable image unusable
            pass
    else:
        raise ImageLoadError(
            f"Unsupported image input of type {type(source).__name__}; pass a path, PIL image or numpy array."
        )
    _check_size(image.size, max_pixels, "image")
    if image.width < 1 or image.height < 1:
        raise ImageLoadError("Image is empty (zero width or height).")
    return _pil_to_rgb(image)


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}. "
            "Downscale it first, or raise the limit (--max-pixels / load_image(max_pixels=...))."
        )
