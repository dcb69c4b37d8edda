"""editseg: referring image segmentation from the grounding inside image-editing models.

Quick start::

    from editseg import Segmenter
    seg = Segmenter.from_pretrained("flux2-klein-4b")
    result = seg.segment("photo.jpg", "the zebra on the left")

``import editseg`` stays light (no torch): the names below are imported on first use, so the
command line answers ``--version``, ``--help`` and ``models`` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .catalog import DEFAULT_MODEL
from .errors import EditsegError

if TYPE_CHECKING:
    from .api import SegmentationResult, Segmenter
    from .config import MethodConfig

__version__ = "0.1.0"
__all__ = ["Segmenter", "SegmentationResult", "MethodConfig", "EditsegError", "DEFAULT_MODEL", "__version__"]
LAZY = {"Segmenter": "editseg.api", "SegmentationResult": "editseg.results", "MethodConfig": "editseg.config"}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        import importlib

        value = getattr(importlib.import_module(LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
