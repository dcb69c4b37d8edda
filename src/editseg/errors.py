"""Errors that editseg reports to people: each says what went wrong and what to do next.

The CLI prints these messages without a traceback (exit status 2); library users can catch
:class:`EditsegError` to handle them all.
"""

from __future__ import annotations


class EditsegError(Exception):
    """Base class of every error editseg reports with an actionable message."""


class ModelNotFoundError(EditsegError):
    """Model weights could not be found locally or on the hub."""


class UnsupportedModelError(EditsegError):
    """The model exists but cannot serve this method (or is not a known backbone)."""


class ImageLoadError(EditsegError):
    """An image could not be read, or is not usable as input."""


class ExpressionError(EditsegError):
    """A referring expression is empty, too long or otherwise unusable."""


class ConfigError(EditsegError):
    """An option has an invalid value or an invalid combination with other options."""


class UnsafeFileError(EditsegError):
    """A file editseg was asked to load holds more than plain data (code-running pickle content)."""


class OutOfMemoryError(EditsegError):
    """The device ran out of memory; the message suggests ways to need less."""


OFFLINE_HINT = (
    "To use a local copy, pass its folder (the one holding model_index.json) as --model / "
    "Segmenter.from_pretrained(path), or set EDITSEG_MODELS_DIR to a folder holding one sub-folder "
    "per model named like the hub repository (e.g. $EDITSEG_MODELS_DIR/FLUX.2-klein-4B). "
    "Download with `hf download <repo-id> --local-dir <folder>` on a machine with internet. "
    "HF_HUB_OFFLINE=1 makes every load local-only."
)


def out_of_memory_message(device: str) -> str:
    """A suggestion list for an out-of-memory failure on ``device``."""
    return (
        f"Out of memory on {device}. Try one or more of: a smaller input (--max-side 768 or 512), "
        "fewer expressions per batch (--batch-size 1), model CPU offload (--offload model) or "
        "sequential offload (--offload sequential, slowest, least memory), bf16 (--dtype bfloat16), "
        "or a smaller backbone (flux2-klein-4b)."
    )
