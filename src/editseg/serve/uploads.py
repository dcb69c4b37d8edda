"""Uploaded bytes → an RGB image, with the pixel limit checked before anything is decoded."""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError
from ..images import load_image


class ImageTooLargeError(ImageLoadError):
    """The image has more pixels than the service accepts (HTTP 422)."""


def decode_image(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """``(RGB image, sha256 hex of the bytes)``; :class:`ImageLoadError` when unreadable.

    The size is read from the header first, so a small file that claims a huge image is refused
    before its pixels are decoded (decompression bombs)."""
    if not data:
        raise ImageLoadError("The uploaded image is empty (0 bytes).")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # our own limit, with our own message
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"The image is {width}x{height} = {width * height:,} pixels; this server accepts at most "
                f"{max_pixels:,}. Downscale it first."
            )
        image.load()
        try:
            image = ImageOps.exif_transpose(image)  # masks line up with what viewers show
        except Exception:  # broken EXIF must not make a readable image unusable
            pass
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageLoadError("The upload is not an image format this server can read (or it is corrupt).") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"The uploaded image is truncated or corrupt ({error}).") from None
    return load_image(image, max_pixels=max_pixels), digest
